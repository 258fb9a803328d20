"""Offline evaluation on the held-out test split: evaluation sets, rankings per model, metric tables.

Evaluation sets (built from the catalog's test split only, never from training data):
- image->image: each (sampled) test image queries the other test images; relevant = same category
  (grade 1), grade 2 when they also share a tag other than the category's own name.
- text->image: test-split tags (query "tag words", relevant = the test images carrying it, grade 1)
  and test image titles (known-item queries: the image itself, grade 2). Titles of test images are
  never training texts; tag words are (for train images), so the two origins are reported apart.
- judged: the held-out side of imported judgments (`judgments_eval.parquet`), restricted to test images.
The corpus searched is the test split, so a metric never rewards finding a training image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from imagesearch.metrics import mean_metrics, recall_at_k
from imagesearch.training_data import tag_text

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


@dataclass(slots=True)
class ModelRankings:
    """Ranked corpus ids per query, for one model: what every metric and plot is computed from."""

    image: dict[str, list[str]]  # query image id -> ranking (the query itself removed)
    text: dict[str, list[str]]  # query text -> ranking


def rank_corpus(
    sets: EvalSets, corpus_vectors: np.ndarray, embed_texts: TextEmbedder | None, depth: int = DEPTH
) -> ModelRankings:
    """Exact search of the test corpus for every evaluation query."""
    ids = sets.corpus["id"].to_numpy()
    position = {image_id: i for i, image_id in enumerate(ids)}
    image_queries = sets.image_qrels["query_image_id"].drop_duplicates().tolist()
    scores = corpus_vectors[[position[q] for q in image_queries]] @ corpus_vectors.T
    scores[np.arange(len(image_queries)), [position[q] for q in image_queries]] = -np.inf
    image = dict(zip(image_queries, _top_ids(scores, ids, depth), strict=True))
    text: dict[str, list[str]] = {}
    if embed_texts is not None and len(sets.text_qrels):
        texts = sets.text_qrels["query"].drop_duplicates().tolist()
        text = dict(zip(texts, _top_ids(embed_texts(texts) @ corpus_vectors.T, ids, depth), strict=True))
    return ModelRankings(image, text)


def _top_ids(scores: np.ndarray, ids: np.ndarray, depth: int) -> list[list[str]]:
    depth = min(depth, scores.shape[1])
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    order = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
    return [ids[row].tolist() for row in order]


def score_rankings(sets: EvalSets, rankings: ModelRankings, ks=(1, 5, 10)) -> dict[str, dict[str, float]]:
    """Metric dicts per query type: image_to_image, text_to_image (all text origins), and per origin."""
    out = {}
    if rankings.image:
        grades = _grades_by_query(sets.image_qrels, "query_image_id")
        queries = list(rankings.image)
        out[IMAGE_TO_IMAGE] = mean_metrics(
            [rankings.image[q] for q in queries], [grades.get(q, {}) for q in queries], ks
        )
    if rankings.text:
        for origin, qrels in [("", sets.text_qrels), *sets.text_qrels.groupby("origin")]:
            grades = _grades_by_query(qrels, "query")
            queries = list(grades)
            name = TEXT_TO_IMAGE + (f"/{origin}" if origin else "")
            out[name] = mean_metrics([rankings.text[q] for q in queries], [grades[q] for q in queries], ks)
    return out


def _grades_by_query(qrels: pd.DataFrame, key: str) -> dict[str, dict[str, float]]:
    best = qrels.groupby([key, "image_id"])["grade"].max().reset_index()
    return {
        query: dict(zip(group["image_id"], group["grade"].astype(float), strict=True))
        for query, group in best.groupby(key)
    }


def recall_curve(sets: EvalSets, rankings: dict[str, list[str]], key: str, ks: list[int]) -> list[float]:
    """Mean recall@k for each k (the curve plotted per model); `key` names the qrels' query column."""
    grades = _grades_by_query(sets.image_qrels if key == "query_image_id" else sets.text_qrels, key)
    queries = [q for q in rankings if grades.get(q)]
    return [recall_at_k([rankings[q] for q in queries], [set(grades[q]) for q in queries], k) for k in ks]


def metrics_table(
    results: dict[str, dict[str, dict[str, float]]],
    columns=("ndcg_at_10", "map_at_10", "mrr", "recall_at_10", "precision_at_10"),
) -> pd.DataFrame:
    """One row per (model, query type) with the headline metrics and the query count."""
    rows = [
        {
            "model": model,
            "query_type": query_type,
            "n": int(metrics.get("queries", 0)),
            **{c: metrics.get(c) for c in columns},
        }
        for model, by_type in results.items()
        for query_type, metrics in by_type.items()
    ]
    return pd.DataFrame(rows)
