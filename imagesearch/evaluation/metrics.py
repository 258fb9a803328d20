"""Retrieval metrics as pure functions of ranked ids and graded relevance.

`relevant` maps an id to its grade (> 0 is relevant; a plain set means grade 1 for each member).
Queries without any relevant item are skipped by the mean functions, never counted as zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Grades = Mapping[str, float]


class _Positive(dict):
    """Grades already kept to the relevant (> 0) and made float: `_grades` passes them through, so a
    mean over many metrics normalises each query's grades once (validation scores every epoch)."""


def _grades(relevant: Grades | set[str]) -> dict[str, float]:
    if isinstance(relevant, _Positive):
        return relevant
    if isinstance(relevant, Mapping):
        return _Positive((key, float(grade)) for key, grade in relevant.items() if grade > 0)
    return _Positive(dict.fromkeys(relevant, 1.0))


def precision_at_k(ranking: Sequence[str], relevant: Grades | set[str], k: int) -> float:
    grades = _grades(relevant)
    return sum(1 for item in ranking[:k] if item in grades) / k


def recall_of(ranking: Sequence[str], relevant: Grades | set[str], k: int) -> float:
    """|top-k ∩ relevant| / min(k, |relevant|): 1.0 when the top k is as full as it can be."""
    grades = _grades(relevant)
    return sum(1 for item in ranking[:k] if item in grades) / min(k, len(grades))


def average_precision_at_k(ranking: Sequence[str], relevant: Grades | set[str], k: int) -> float:
    """AP@k: the mean of precision@i over the ranks i <= k holding a relevant item, / min(k, |relevant|)."""
    grades = _grades(relevant)
    hits, total = 0, 0.0
    for rank, item in enumerate(ranking[:k], start=1):
        if item in grades:
            hits += 1
            total += hits / rank
    return total / min(k, len(grades))


def reciprocal_rank(ranking: Sequence[str], relevant: Grades | set[str]) -> float:
    grades = _grades(relevant)
    return next((1.0 / rank for rank, item in enumerate(ranking, start=1) if item in grades), 0.0)


def ndcg_at_k(ranking: Sequence[str], relevant: Grades | set[str], k: int) -> float:
    """Normalised DCG with gain 2^grade - 1 and discount log2(rank + 1)."""
    grades = _grades(relevant)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    gains = np.array([2.0 ** grades.get(item, 0.0) - 1 for item in ranking[:k]])
    ideal = np.sort(2.0 ** np.array(list(grades.values())) - 1)[::-1][:k]
    return float(gains @ discounts[: len(gains)] / (ideal @ discounts[: len(ideal)]))


PER_QUERY = {  # "<name>_at_<k>" -> the metric of one query
    "ndcg": ndcg_at_k,
    "map": average_precision_at_k,
    "recall": recall_of,
    "precision": precision_at_k,
}


def _with_relevance(
    ranked: Sequence[Sequence[str]], relevant: Sequence[Grades | set[str]]
) -> list[tuple[Sequence[str], Grades | set[str]]]:
    pairs = ((ranking, _grades(rel)) for ranking, rel in zip(ranked, relevant, strict=True))
    return [(ranking, grades) for ranking, grades in pairs if grades]


def mean_metrics(
    ranked: Sequence[Sequence[str]], relevant: Sequence[Grades | set[str]], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """nDCG@k, mAP@k, recall@k, precision@k for each k, and MRR, averaged over queries with relevance."""
    pairs = _with_relevance(ranked, relevant)
    if not pairs:
        return {}
    out = {"queries": float(len(pairs)), "mrr": float(np.mean([reciprocal_rank(r, g) for r, g in pairs]))}
    for k in ks:
        for name, metric in PER_QUERY.items():
            out[f"{name}_at_{k}"] = float(np.mean([metric(r, g, k) for r, g in pairs]))
    return out


def recall_at_k(ranked: Sequence[Sequence[str]], relevant: Sequence[set[str]], k: int) -> float:
    """Mean recall_of over the queries that have relevant items."""
    scores = [recall_of(ranking, rel, k) for ranking, rel in zip(ranked, relevant, strict=True) if rel]
    return float(np.mean(scores)) if scores else float("nan")


def per_query_metric(
    name: str, ranked: Sequence[Sequence[str]], relevant: Sequence[Grades | set[str]]
) -> np.ndarray:
    """`name` ("ndcg_at_10", "recall_at_10", ...) of each query that has relevant items: the values
    `mean_metrics` averages, in the order given."""
    kind, _, k = name.rpartition("_at_")
    if kind not in PER_QUERY or not k.isdigit():
        raise ValueError(f"no per-query form of {name!r}; use <{'|'.join(PER_QUERY)}>_at_<k>")
    return np.array([PER_QUERY[kind](r, g, int(k)) for r, g in _with_relevance(ranked, relevant)])


def paired_difference(
    new: np.ndarray, old: np.ndarray, confidence: float = 0.95, resamples: int = 2000
) -> tuple[float, float, float]:
    """Mean of `new - old` over the same queries, and a percentile bootstrap interval of that mean
    (queries resampled with replacement, fixed seed): how far a difference this size could be noise."""
    from scipy.stats import bootstrap

    difference = np.asarray(new, dtype=float) - np.asarray(old, dtype=float)
    mean = float(difference.mean()) if len(difference) else float("nan")
    if len(difference) < 2 or np.all(difference == difference[0]):
        return mean, mean, mean
    interval = bootstrap(
        (difference,),
        np.mean,
        confidence_level=confidence,
        n_resamples=resamples,
        method="percentile",
        random_state=0,
    ).confidence_interval
    return mean, float(interval.low), float(interval.high)
