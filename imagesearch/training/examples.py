"""The training examples as integer arrays, and the ways rows are subsampled or dropped."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(slots=True)
class IndexedExamples:
    """The examples table as integer arrays into `image_ids` and `texts` (-1 = absent)."""

    image_ids: list[str]
    texts: list[str]
    anchor: np.ndarray
    positive_image: np.ndarray
    positive_text: np.ndarray
    negative: np.ndarray
    weight: np.ndarray


def index_examples(examples: pd.DataFrame, extra_texts: list[str] = ()) -> IndexedExamples:
    ids = pd.concat([examples[c].dropna() for c in ("anchor_id", "positive_id", "negative_id")]).unique()
    image_ids = sorted(map(str, ids))
    texts = sorted(set(map(str, examples["positive_text"].dropna())) | set(extra_texts))
    image_index = {image_id: i for i, image_id in enumerate(image_ids)}
    text_index = {text: i for i, text in enumerate(texts)}

    def lookup(column: str, table: dict[str, int]) -> np.ndarray:
        return np.array([table[str(v)] if pd.notna(v) else -1 for v in examples[column]], dtype=np.int64)

    return IndexedExamples(
        image_ids,
        texts,
        lookup("anchor_id", image_index),
        lookup("positive_id", image_index),
        lookup("positive_text", text_index),
        lookup("negative_id", image_index),
        examples["weight"].astype(float).to_numpy(np.float32),
    )


def positive_sets(data: IndexedExamples) -> list[set[int]]:
    """For each image: every image some example pairs it with, directly or through a shared text."""
    positives: list[set[int]] = [set() for _ in data.image_ids]
    by_text: dict[int, list[int]] = {}
    for anchor, image, text in zip(data.anchor, data.positive_image, data.positive_text, strict=True):
        if image >= 0:
            positives[anchor].add(int(image))
            positives[image].add(int(anchor))
        if text >= 0:
            by_text.setdefault(int(text), []).append(int(anchor))
    for members in by_text.values():
        if len(members) > 1000:  # a text on that many images says little; do not let it hide negatives
            continue
        for member in members:
            positives[member].update(members)
    return positives


def subsample_examples(examples: pd.DataFrame, max_images: int | None, seed: int) -> pd.DataFrame:
    """The rows whose images all lie in a random `max_images` of the anchors (only those get cached
    features). A hard negative outside that set is dropped, not its row: the pair is still a positive."""
    if max_images is None:
        return examples
    anchors = sorted(examples["anchor_id"].dropna().unique())
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(anchors, size=min(max_images, len(anchors)), replace=False))
    inside = [examples[c].isna() | examples[c].isin(keep) for c in ("anchor_id", "positive_id")]
    kept = examples[inside[0] & inside[1]].reset_index(drop=True)
    return kept.assign(negative_id=kept["negative_id"].where(kept["negative_id"].isin(keep)))


def without_images(data: IndexedExamples, images: set[int]) -> IndexedExamples:
    """Drop the rows that use an image whose views could not be computed (zeros in the cache)."""
    if not images:
        return data
    bad = np.array(sorted(images))
    keep = ~(np.isin(data.anchor, bad) | np.isin(data.positive_image, bad) | np.isin(data.negative, bad))
    return IndexedExamples(
        data.image_ids,
        data.texts,
        data.anchor[keep],
        data.positive_image[keep],
        data.positive_text[keep],
        data.negative[keep],
        data.weight[keep],
    )
