"""Offline evaluation on the held-out test split: evaluation sets, rankings per model, metric tables.

Evaluation sets (built from the catalog's test split only, never from training data):
- image->image: each (sampled) test image queries the other test images; relevant = same category
  (grade 1), grade 2 when they also share a tag other than the category's own name.
- text->image: test-split tags (query "tag words", relevant = the test images carrying it, grade 1)
  and test image titles (known-item queries: the image itself, grade 2). Titles of test images are
  never training texts; tag words are (for train images), so the two origins are reported apart.
- judged: the held-out side of imported judgments (`judgments_eval.parquet`), restricted to test images.
The corpus searched is the test split, so a metric never rewards finding a training image.

Title queries drop author tokens: openclipart file names end with (a cut of) the author's name, shared
across splits, so a raw title partly rewards learning an author's style rather than the words.

Out-of-domain sets (`collection_sets`) come from a labelled collection no training source reads:
image->image by label, text->image by the label's query (origin ``label``, grade 1) and by captions
naming at most a few images (origin ``caption``, known-item, grade 2)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from imagesearch.catalog.corpus import COMPLETE_MARKER
from imagesearch.catalog.ood_collections import MANIFEST, fetch_collections, read_manifest
from imagesearch.settings import Settings
from imagesearch.training_data.examples import tag_text

CORPUS_FILE, IMAGE_QRELS_FILE, TEXT_QRELS_FILE = "corpus.parquet", "image_qrels.parquet", "text_qrels.parquet"


IMAGE_TO_IMAGE, TEXT_TO_IMAGE = "image_to_image", "text_to_image"


DEPTH = 100  # rankings are cut here: every metric is @k <= DEPTH (MRR beyond it counts as 0)


@dataclass(slots=True)
class EvalSets:
    corpus: pd.DataFrame  # id, path, category
    image_qrels: pd.DataFrame  # query_image_id, image_id, grade
    text_qrels: pd.DataFrame  # query, origin (tag | title | judgment), image_id, grade

    def write(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / CORPUS_FILE, folder / IMAGE_QRELS_FILE, folder / TEXT_QRELS_FILE]
        for frame, path in zip((self.corpus, self.image_qrels, self.text_qrels), paths, strict=True):
            frame.to_parquet(path, index=False)
        return paths

    @classmethod
    def read(cls, folder: Path) -> EvalSets:
        if not (folder / TEXT_QRELS_FILE).is_file():
            raise FileNotFoundError(f"no evaluation sets in {folder}: build them first (asset eval_sets)")
        return cls(
            *(pd.read_parquet(folder / name) for name in (CORPUS_FILE, IMAGE_QRELS_FILE, TEXT_QRELS_FILE))
        )

    def summary(self) -> dict[str, int]:
        return {
            "corpus_images": len(self.corpus),
            "image_queries": int(self.image_qrels["query_image_id"].nunique()),
            **{
                f"text_queries_{origin}": int(group["query"].nunique())
                for origin, group in self.text_qrels.groupby("origin")
            },
        }


def build_eval_sets(
    catalog: pd.DataFrame,
    judgments_eval: pd.DataFrame | None = None,
    *,
    max_image_queries: int = 500,
    tag_max_share: float = 0.3,
    seed: int = 0,
    drop_authors: bool = True,
) -> EvalSets:
    """The test split's held-out sets. `drop_authors` False keeps the author tokens in the title
    queries, as round one measured them (a model that learned an author's style profits)."""
    test = catalog[catalog["split"] == "test"].sort_values("id")
    corpus = test[["id", "path", "category"]].reset_index(drop=True)
    tags = test[["id", "tags"]].explode("tags").dropna(subset=["tags"]).astype({"tags": str})
    return EvalSets(
        corpus,
        _image_qrels(test, tags, max_image_queries, seed),
        pd.concat(
            [
                _tag_qrels(tags, len(test), tag_max_share),
                title_qrels(test, author_tokens(catalog) if drop_authors else frozenset()),
                _judged_qrels(judgments_eval, test),
            ],
            ignore_index=True,
        ),
    )


def _image_qrels(test: pd.DataFrame, tags: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    queries = test.sample(min(limit, len(test)), random_state=seed)[["id", "category"]]
    pairs = queries.merge(test[["id", "category"]], on="category", suffixes=("_query", ""))
    pairs = pairs[pairs["id_query"] != pairs["id"]]
    # the category's own name is often also a tag: sharing it says nothing beyond grade 1
    specific = tags.merge(test[["id", "category"]], on="id")
    specific = specific[specific["tags"] != specific["category"].astype(str)][["id", "tags"]]
    shared = specific.merge(specific, on="tags", suffixes=("_query", ""))
    shared = shared[["id_query", "id"]].drop_duplicates().assign(shares_tag=True)
    pairs = pairs.merge(shared, on=["id_query", "id"], how="left")
    return pd.DataFrame(
        {
            "query_image_id": pairs["id_query"],
            "image_id": pairs["id"],
            "grade": np.where(pairs["shares_tag"].fillna(False).astype(bool), 2, 1),
        }
    ).reset_index(drop=True)


def _tag_qrels(tags: pd.DataFrame, images: int, max_share: float) -> pd.DataFrame:
    counts = tags.groupby("tags")["id"].nunique()
    usable = counts[(counts >= 2) & (counts <= max(2, max_share * images))].index
    kept = tags[tags["tags"].isin(usable)]
    return pd.DataFrame(
        {"query": kept["tags"].map(tag_text), "origin": "tag", "image_id": kept["id"], "grade": 1}
    )


def title_qrels(split: pd.DataFrame, authors: frozenset[str]) -> pd.DataFrame:
    """Known-item title queries of one split's images: `authors` dropped from each title's end, titles
    left empty or carried by two images left out; each query's one relevant image at grade 2."""
    titled = split.dropna(subset=["title"]).assign(
        title=lambda f: f["title"].map(partial(strip_authors, authors=authors))
    )
    titled = titled[titled["title"] != ""].drop_duplicates("title", keep=False)
    return pd.DataFrame({"query": titled["title"], "origin": "title", "image_id": titled["id"], "grade": 2})


def author_tokens(
    catalog: pd.DataFrame, min_categories: int = 2, trailing_share: float = 0.8
) -> frozenset[str]:
    """Tokens that end titles in several unrelated categories and rarely appear anywhere else.

    Author names sit at the end of openclipart titles (``full moon dan gerhards``) across categories;
    content words (``apple``) stay within a category, appear mid-title too, or are tags.
    """
    titles = catalog[["category", "title"]].dropna()
    words = titles.assign(token=titles["title"].str.split()).explode("token").dropna(subset=["token"])
    words["trailing"] = words.groupby(level=0).cumcount(ascending=False) < 2
    stats = pd.DataFrame(
        {
            "categories": words[words["trailing"]].groupby("token")["category"].nunique(),
            "trailing": words.groupby("token")["trailing"].mean(),
        }
    ).fillna(0)
    chosen = stats[(stats["categories"] >= min_categories) & (stats["trailing"] >= trailing_share)]
    tags = set(catalog["tags"].explode().dropna().astype(str)) if "tags" in catalog else set()
    return frozenset(chosen.index) - tags


def strip_authors(title: str, authors: frozenset[str]) -> str:
    """Drop author tokens from the end of a title (never from its start or middle)."""
    tokens = title.split()
    while tokens and tokens[-1] in authors:
        tokens.pop()
    return " ".join(tokens)


def whole_catalog_text_qrels(text_qrels: pd.DataFrame, catalog: pd.DataFrame) -> pd.DataFrame:
    """The held-out text queries judged over every catalog image by the rules that built them: a tag
    query finds every image carrying the tag, a title query every image with that title (authors
    stripped); judged queries stay as judged. A service searches the whole catalog, and its users
    click any relevant image: judged on the test split alone, a result from the training split is
    never relevant, which penalises the ranker that finds the most of them."""
    tags = catalog[["id", "tags"]].explode("tags").dropna(subset=["tags"]).astype({"tags": str})
    tags = tags.assign(query=tags["tags"].map(tag_text))
    tags = tags[tags["query"].isin(text_qrels.loc[text_qrels["origin"] == "tag", "query"])]
    titled = catalog.dropna(subset=["title"])
    titles = titled["title"].map(partial(strip_authors, authors=author_tokens(catalog)))
    same_title = titles.isin(text_qrels.loc[text_qrels["origin"] == "title", "query"])
    extra = [
        pd.DataFrame({"query": tags["query"], "origin": "tag", "image_id": tags["id"], "grade": 1}),
        pd.DataFrame(
            {"query": titles[same_title], "origin": "title", "image_id": titled["id"][same_title], "grade": 2}
        ),
    ]
    judged = pd.concat([text_qrels, *extra], ignore_index=True)
    return judged.drop_duplicates(["query", "image_id"]).reset_index(drop=True)


def _judged_qrels(judgments_eval: pd.DataFrame | None, test: pd.DataFrame) -> pd.DataFrame:
    if judgments_eval is None or judgments_eval.empty:
        return pd.DataFrame(columns=["query", "origin", "image_id", "grade"])
    judged = judgments_eval[
        judgments_eval["image_id"].isin(test["id"]) & judgments_eval["query_text"].notna()
    ]
    return pd.DataFrame(
        {
            "query": judged["query_text"],
            "origin": "judgment",
            "image_id": judged["image_id"],
            "grade": judged["grade"],
        }
    )


def collection_sets(
    manifest: pd.DataFrame,
    root: Path,
    split: str,
    *,
    max_image_queries: int = 500,
    seed: int = 0,
    max_caption_images: int = 5,
) -> EvalSets:
    """Evaluation sets from one split of an out-of-domain collection (see `ood_collections`)."""
    rows = manifest[manifest["split"] == split].sort_values("path")
    corpus = pd.DataFrame(
        {"id": rows["path"], "path": [str(root / p) for p in rows["path"]], "category": rows["label"]}
    ).reset_index(drop=True)
    labelled = corpus[corpus["category"] != ""]
    queries = labelled.sample(min(max_image_queries, len(labelled)), random_state=seed)[["id", "category"]]
    pairs = queries.merge(labelled[["id", "category"]], on="category", suffixes=("_query", ""))
    pairs = pairs[pairs["id_query"] != pairs["id"]]
    image_qrels = pd.DataFrame({"query_image_id": pairs["id_query"], "image_id": pairs["id"], "grade": 1})
    with_label = rows[rows["label_text"] != ""].assign(query=lambda f: f["label_text"].str.split("|"))
    with_label = with_label.explode("query")
    label_qrels = pd.DataFrame(
        {"query": with_label["query"], "origin": "label", "image_id": with_label["path"], "grade": 1}
    )
    sizes = rows.groupby("caption")["path"].transform("size")
    named = rows[
        (rows["caption"] != "") & (sizes <= max_caption_images) & ~rows["caption"].isin(with_label["query"])
    ]
    caption_qrels = pd.DataFrame(
        {"query": named["caption"], "origin": "caption", "image_id": named["path"], "grade": 2}
    )
    return EvalSets(
        corpus, image_qrels.reset_index(drop=True), pd.concat([label_qrels, caption_qrels], ignore_index=True)
    )


def outside_sets(
    root: Path, names: list[str], split: str, max_image_queries: int = 500
) -> dict[str, EvalSets]:
    """Evaluation sets of each named out-of-domain collection fetched under `root` (one split)."""
    out = {}
    for name in names:
        folder = root / name
        if not (folder / COMPLETE_MARKER).exists():
            raise FileNotFoundError(
                f"out-of-domain collection {name!r} is not in {root}: run `imagesearch corpus fetch`, "
                "or drop it from IMAGESEARCH_EVALUATION__OOD_COLLECTIONS"
            )
        out[name] = collection_sets(read_manifest(folder), folder, split, max_image_queries=max_image_queries)
    return out


def outside_manifests(settings: Settings) -> list[Path]:
    """The manifest of every configured out-of-domain collection (fetched or not)."""
    return [settings.ood_corpus_dir / name / MANIFEST for name in settings.evaluation.ood_collections]


def outside_split(settings: Settings, split: str) -> dict[str, EvalSets]:
    """One split of every configured out-of-domain collection, fetching those not there yet. Their
    folder exists afterwards, even with none configured: the DVC stages that read it list it."""
    names = settings.evaluation.ood_collections
    settings.ood_corpus_dir.mkdir(parents=True, exist_ok=True)
    fetch_collections(names, settings.ood_corpus_dir)
    return outside_sets(settings.ood_corpus_dir, names, split, settings.evaluation.max_image_queries)


# --- rankings and metrics ---------------------------------------------------------------------
ImageEmbedder = Callable[[list[str]], np.ndarray]  # paths -> unit rows


TextEmbedder = Callable[[list[str]], np.ndarray]  # texts -> unit rows
