"""The val-split images and queries that every epoch is scored on (never the test split)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from imagesearch.evaluation.sets import author_tokens, title_qrels
from imagesearch.training_data.examples import tag_text


@dataclass(slots=True)
class ValidationSet:
    """Val-split images (clean view) with text queries (their tags, and their titles as known-item
    queries, as the test split's text sets have) and image queries (same category)."""

    image_ids: list[str]
    paths: list[str]
    categories: list[str]
    query_texts: list[str]
    text_relevant: list[set[str]]
    title_texts: list[str]
    title_relevant: list[set[str]]

    @classmethod
    def from_catalog(cls, catalog: pd.DataFrame, min_images: int = 2) -> ValidationSet:
        val = catalog[catalog["split"] == "val"].sort_values("id")
        exploded = val[["id", "tags"]].explode("tags").dropna(subset=["tags"])
        groups = exploded.groupby(exploded["tags"].astype(str))["id"].apply(set)
        groups = groups[groups.map(len) >= min_images]
        titles = _title_queries(val, catalog)
        return cls(
            val["id"].tolist(),
            val["path"].tolist(),
            val["category"].astype(str).tolist(),
            [tag_text(tag) for tag in groups.index],
            groups.tolist(),
            titles.index.tolist(),
            titles.tolist(),
        )

    def texts(self) -> list[str]:
        """Every text query, tags first."""
        return [*self.query_texts, *self.title_texts]

    def without(self, failed: set[str]) -> tuple[ValidationSet, np.ndarray]:
        """The set without images that could not be decoded (their cached features are zeros, which
        would rank as real images), and the boolean mask of the rows kept."""
        keep = np.array([image_id not in failed for image_id in self.image_ids], dtype=bool)
        tags = _answerable(self.query_texts, self.text_relevant, failed)
        titles = _answerable(self.title_texts, self.title_relevant, failed)
        kept = ValidationSet(
            [i for i, k in zip(self.image_ids, keep, strict=True) if k],
            [p for p, k in zip(self.paths, keep, strict=True) if k],
            [c for c, k in zip(self.categories, keep, strict=True) if k],
            [text for text, _ in tags],
            [relevant for _, relevant in tags],
            [text for text, _ in titles],
            [relevant for _, relevant in titles],
        )
        return kept, keep


def _title_queries(val: pd.DataFrame, catalog: pd.DataFrame) -> pd.Series:
    """Title -> the one val image carrying it: known-item queries built as the test split's are."""
    if "title" not in val:
        return pd.Series(dtype=object)
    qrels = title_qrels(val, author_tokens(catalog))
    return pd.Series([{image_id} for image_id in qrels["image_id"]], index=qrels["query"].to_numpy())


def _answerable(texts: list[str], relevant: list[set[str]], failed: set[str]) -> list[tuple[str, set[str]]]:
    return [(text, found - failed) for text, found in zip(texts, relevant, strict=True) if found - failed]
