"""Offline evaluation on the held-out test split: evaluation sets, rankings per model, metric tables.

Evaluation sets (built from the catalog's test split only, never from training data):
- image->image: each (sampled) test image queries the other test images; relevant = same category
  (grade 1), grade 2 when they also share a tag other than the category's own name.
- text->image: test-split tags (query "tag words", relevant = the test images carrying it, grade 1)
  and test image titles (known-item queries: the image itself, grade 2). Titles of test images are
  never training texts; tag words are (for train images), so the two origins are reported apart.
- judged: the held-out side of imported judgments (`judgments_eval.parquet`), restricted to test images.
The corpus searched is the test split, so a metric never rewards finding a training image."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

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
) -> EvalSets:
    test = catalog[catalog["split"] == "test"].sort_values("id")
    corpus = test[["id", "path", "category"]].reset_index(drop=True)
    tags = test[["id", "tags"]].explode("tags").dropna(subset=["tags"]).astype({"tags": str})
    return EvalSets(
        corpus,
        _image_qrels(test, tags, max_image_queries, seed),
        pd.concat(
            [
                _tag_qrels(tags, len(test), tag_max_share),
                _title_qrels(test),
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


def _title_qrels(test: pd.DataFrame) -> pd.DataFrame:
    titled = test.dropna(subset=["title"])
    titled = titled[titled["title"].str.strip() != ""].drop_duplicates("title", keep=False)
    return pd.DataFrame({"query": titled["title"], "origin": "title", "image_id": titled["id"], "grade": 2})


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


# --- rankings and metrics ---------------------------------------------------------------------
ImageEmbedder = Callable[[list[str]], np.ndarray]  # paths -> unit rows


TextEmbedder = Callable[[list[str]], np.ndarray]  # texts -> unit rows
