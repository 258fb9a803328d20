"""Training examples: one table schema, the metadata-derived sources, the mix and the leakage rule.

Every source writes rows of EXAMPLE_SCHEMA, one row per (anchor image, positive) pair:

    anchor_id      catalog id of the anchor image (always a train-split image)
    positive_id    catalog id of a positive image, or null; equal to anchor_id for two views of one image
    positive_text  a positive text (query, class prompt, tag, title, caption), or null
    negative_id    catalog id of a known hard negative image, or null
    weight         importance of the row (inverse propensity for clicks, grade for judgments), > 0
    source         augmentation | classifier | tags | judgments | clicks

Exactly one of positive_id / positive_text is set. Only train-split images appear in any column,
so validation and test images stay unseen (see `leakage_problems`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

EXAMPLE_SCHEMA = pa.schema(
    [
        ("anchor_id", pa.string()),
        ("positive_id", pa.string()),
        ("positive_text", pa.string()),
        ("negative_id", pa.string()),
        ("weight", pa.float32()),
        ("source", pa.string()),
    ]
)
EXAMPLE_COLUMNS = EXAMPLE_SCHEMA.names
TRAIN = "train"


def examples_frame(rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """Rows coerced to the example schema (missing optional columns become null)."""
    frame = pd.DataFrame(rows)
    for column in EXAMPLE_COLUMNS:
        if column not in frame:
            frame[column] = None
    frame = frame[EXAMPLE_COLUMNS]
    return pa.Table.from_pandas(frame, schema=EXAMPLE_SCHEMA, preserve_index=False).to_pandas(
        types_mapper=pd.ArrowDtype
    )


def train_images(catalog: pd.DataFrame) -> pd.DataFrame:
    return catalog[catalog["split"] == TRAIN].reset_index(drop=True)


def tag_text(tag: str) -> str:
    return tag.replace("_", " ").replace("-", " ").strip()


# --- augmentation: two views of one image -------------------------------------------------------
def augmentation_pairs(catalog: pd.DataFrame, *, per_image: int) -> pd.DataFrame:
    """Self-supervised rows: the training step draws two random views of the anchor for each row."""
    ids = train_images(catalog)["id"].tolist() * per_image
    return examples_frame({"anchor_id": ids, "positive_id": ids, "weight": 1.0, "source": "augmentation"})


# --- classifier: confident ImageNet labels --------------------------------------------------------
def classifier_pairs(
    labels: pd.DataFrame,
    *,
    threshold: float,
    prompt: str,
    same_label_positives: int,
    seed: int,
) -> pd.DataFrame:
    """(image, prompted class name) rows and same-label image rows for labels above `threshold`.

    `labels` has one row per train image: id, label (class name), probability (of the top class).
    The row weight is the classifier's probability.
    """
    confident = labels[labels["probability"] >= threshold]
    texts = pd.DataFrame(
        {
            "anchor_id": confident["id"],
            "positive_text": [prompt.format(label) for label in confident["label"]],
            "weight": confident["probability"].astype(float),
            "source": "classifier",
        }
    )
    groups = confident.groupby("label")["id"].apply(list)
    images = _group_positives(groups, same_label_positives, seed, source="classifier")
    return examples_frame(pd.concat([texts, images], ignore_index=True))


def _group_positives(groups: pd.Series, per_image: int, seed: int, *, source: str) -> pd.DataFrame:
    """For each member of each group, up to `per_image` other members drawn at random as positives."""
    rng = np.random.default_rng(seed)
    anchors, positives = [], []
    for members in groups:
        if len(members) < 2 or per_image == 0:
            continue
        members = np.asarray(members)
        for position, anchor in enumerate(members):
            others = np.delete(members, position)
            chosen = rng.choice(others, size=min(per_image, len(others)), replace=False)
            anchors += [anchor] * len(chosen)
            positives += chosen.tolist()
    return pd.DataFrame({"anchor_id": anchors, "positive_id": positives, "weight": 1.0, "source": source})


# --- tags: shared categories and the texts attached to an image -----------------------------------
def tag_pairs(catalog: pd.DataFrame, *, max_share: float, same_tag_positives: int, seed: int) -> pd.DataFrame:
    """Images sharing a specific tag -> image positives; every tag, title and caption -> text positives.

    Tags carried by more than `max_share` of the train images (``computer``, ``icons``...) say too little
    to make two images positives; they still serve as texts of their images.
    """
    train = train_images(catalog)
    exploded = train[["id", "tags"]].explode("tags").dropna(subset=["tags"])
    exploded["tags"] = exploded["tags"].astype(str)
    counts = exploded["tags"].value_counts()
    specific = counts[counts <= max(2, max_share * len(train))].index
    groups = exploded[exploded["tags"].isin(specific)].groupby("tags")["id"].apply(list)
    images = _group_positives(groups, same_tag_positives, seed, source="tags")
    texts = [
        pd.DataFrame({"anchor_id": exploded["id"], "positive_text": exploded["tags"].map(tag_text)}),
        *(
            pd.DataFrame({"anchor_id": train["id"], "positive_text": train[column]})
            for column in ("title", "caption")
            if column in train
        ),
    ]
    text_rows = pd.concat(texts, ignore_index=True).dropna(subset=["positive_text"])
    text_rows = text_rows[text_rows["positive_text"].astype(str).str.strip() != ""].drop_duplicates()
    text_rows = text_rows.assign(weight=1.0, source="tags")
    return examples_frame(pd.concat([images, text_rows], ignore_index=True))


# --- the mix ------------------------------------------------------------------------------------
def mix_examples(
    sources: Mapping[str, pd.DataFrame], weights: Mapping[str, float], *, seed: int
) -> pd.DataFrame:
    """Enabled sources (weight > 0) concatenated, row weights scaled by their source's weight, shuffled."""
    enabled = [
        frame.assign(weight=frame["weight"].astype(float) * weights[name])
        for name, frame in sources.items()
        if weights.get(name, 0) > 0 and len(frame)
    ]
    if not enabled:
        return examples_frame([])
    mixed = pd.concat([examples_frame(frame) for frame in enabled], ignore_index=True)
    return examples_frame(mixed.sample(frac=1.0, random_state=seed).reset_index(drop=True))


def leakage_problems(
    examples: pd.DataFrame, catalog: pd.DataFrame, *, eval_queries: set[str] | None = None
) -> list[str]:
    """What in `examples` a model must not see: non-train images and held-out judgment queries."""
    train_ids = set(train_images(catalog)["id"])
    split_of = catalog.set_index("id")["split"]
    problems = []
    for column in ("anchor_id", "positive_id", "negative_id"):
        used = examples[column].dropna()
        leaked = used[~used.isin(train_ids)]
        if len(leaked):
            splits = split_of.reindex(leaked.unique()).fillna("unknown").value_counts().to_dict()
            problems.append(f"{column}: {len(leaked)} rows use non-train images {splits}")
    if eval_queries:
        texts = examples.loc[examples["source"] == "judgments", "positive_text"].dropna()
        held_out = texts[texts.isin(eval_queries)]
        if len(held_out):
            problems.append(f"{len(held_out)} rows use held-out evaluation judgment queries")
    return problems


def source_summary(examples: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per source: rows, image-text and image-image rows, rows with a hard negative, total weight."""
    summary = {}
    for source, rows in examples.groupby("source", observed=True):
        summary[str(source)] = {
            "rows": len(rows),
            "image_text": int(rows["positive_text"].notna().sum()),
            "image_image": int(rows["positive_id"].notna().sum()),
            "hard_negatives": int(rows["negative_id"].notna().sum()),
            "weight": round(float(rows["weight"].astype(float).sum()), 2),
        }
    return summary
