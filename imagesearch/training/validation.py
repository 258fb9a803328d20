"""The val-split images and queries that every epoch is scored on (never the test split)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from imagesearch.training_data.examples import tag_text


@dataclass(slots=True)
class ValidationSet:
    """Val-split images (clean view) with text queries (their tags) and image queries (same category)."""

    image_ids: list[str]
    paths: list[str]
    categories: list[str]
    query_texts: list[str]
    text_relevant: list[set[str]]

    @classmethod
    def from_catalog(cls, catalog: pd.DataFrame, min_images: int = 2) -> ValidationSet:
        val = catalog[catalog["split"] == "val"].sort_values("id")
        exploded = val[["id", "tags"]].explode("tags").dropna(subset=["tags"])
        groups = exploded.groupby(exploded["tags"].astype(str))["id"].apply(set)
        groups = groups[groups.map(len) >= min_images]
        return cls(
            val["id"].tolist(),
            val["path"].tolist(),
            val["category"].astype(str).tolist(),
            [tag_text(tag) for tag in groups.index],
            groups.tolist(),
        )

    def without(self, failed: set[str]) -> tuple[ValidationSet, np.ndarray]:
        """The set without images that could not be decoded (their cached features are zeros, which
        would rank as real images), and the boolean mask of the rows kept."""
        keep = np.array([image_id not in failed for image_id in self.image_ids], dtype=bool)
        queries = [
            (text, relevant - failed)
            for text, relevant in zip(self.query_texts, self.text_relevant, strict=True)
            if relevant - failed
        ]
        kept = ValidationSet(
            [i for i, k in zip(self.image_ids, keep, strict=True) if k],
            [p for p, k in zip(self.paths, keep, strict=True) if k],
            [c for c, k in zip(self.categories, keep, strict=True) if k],
            [text for text, _ in queries],
            [relevant for _, relevant in queries],
        )
        return kept, keep
