"""The val-split images and queries that every epoch is scored on (never the test split)."""

from __future__ import annotations

from dataclasses import dataclass

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
