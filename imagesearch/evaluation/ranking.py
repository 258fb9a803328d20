"""Rankings of the held-out corpus per model (exact search) and the metric tables made from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from imagesearch.evaluation.metrics import mean_metrics, paired_difference, per_query_metric, recall_at_k
from imagesearch.evaluation.sets import DEPTH, IMAGE_TO_IMAGE, TEXT_TO_IMAGE, EvalSets, TextEmbedder

TEST_SPLIT = ""  # the collection key of the test split's rankings (its metric names have no prefix)


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


def per_query_values(sets: EvalSets, rankings: ModelRankings, query_type: str, metric: str) -> np.ndarray:
    """`metric` of each query of `query_type` ("image_to_image", "text_to_image[/<origin>]"), in one
    fixed query order: two models' values line up query by query."""
    if query_type == IMAGE_TO_IMAGE:
        grades, by_query = _grades_by_query(sets.image_qrels, "query_image_id"), rankings.image
    else:
        origin = query_type.partition("/")[2]
        qrels = sets.text_qrels[sets.text_qrels["origin"] == origin] if origin else sets.text_qrels
        grades, by_query = _grades_by_query(qrels, "query"), rankings.text
    queries = sorted(q for q in by_query if q in grades)
    return per_query_metric(metric, [by_query[q] for q in queries], [grades[q] for q in queries])


def guard_differences(
    guarded: list[str],
    new: dict[str, ModelRankings],
    old: dict[str, ModelRankings],
    sets: dict[str, EvalSets],
) -> dict[str, dict[str, float]]:
    """For each guarded metric ("[<collection>:]<query type>.<metric>"), the new model's difference
    from the old one, paired query by query, with its 95% bootstrap interval and query count.
    Rankings and sets are keyed by collection (`TEST_SPLIT` = the test split)."""
    out = {}
    for name in guarded:
        query_type, _, metric = name.rpartition(".")
        collection, _, kind = query_type.rpartition(":")
        if collection not in sets or collection not in new or collection not in old:
            continue
        mine = per_query_values(sets[collection], new[collection], kind, metric)
        theirs = per_query_values(sets[collection], old[collection], kind, metric)
        if not len(mine):
            continue
        difference, low, high = paired_difference(mine, theirs)
        out[name] = {"difference": difference, "low": low, "high": high, "queries": len(mine)}
    return out


def _grades_by_query(qrels: pd.DataFrame, key: str) -> dict[str, dict[str, float]]:
    best = qrels.groupby([key, "image_id"])["grade"].max()
    out: dict[str, dict[str, float]] = {}
    for (query, image_id), grade in zip(best.index, best.to_numpy(dtype=float), strict=True):
        out.setdefault(query, {})[image_id] = float(grade)
    return out


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
