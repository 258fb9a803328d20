"""The offline metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from imagesearch.evaluation.metrics import (
    average_precision_at_k,
    mean_metrics,
    ndcg_at_k,
    precision_at_k,
    recall_of,
    reciprocal_rank,
)

RANKING = ["x", "a", "y", "b"]
RELEVANT = {"a", "b", "c"}


def test_binary_relevance_by_hand():
    assert precision_at_k(RANKING, RELEVANT, 4) == 0.5
    assert recall_of(RANKING, RELEVANT, 4) == pytest.approx(2 / 3)
    assert average_precision_at_k(RANKING, RELEVANT, 4) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert reciprocal_rank(RANKING, RELEVANT) == 0.5
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(RANKING, RELEVANT, 4) == pytest.approx(dcg / ideal)


def test_graded_ndcg_prefers_the_higher_grade_first():
    grades = {"a": 2, "b": 1}
    swapped = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    assert ndcg_at_k(["b", "a"], grades, 2) == pytest.approx(swapped)
    assert ndcg_at_k(["a", "b"], grades, 2) == pytest.approx(1.0)
    assert ndcg_at_k(["a", "b"], {"a": 2, "b": 1, "z": 0}, 2) == pytest.approx(1.0)  # grade 0 = not relevant


@pytest.mark.parametrize(
    ("ranking", "expected"),
    [
        (["a", "b", "c"], {"recall_at_1": 1.0, "precision_at_1": 1.0, "map_at_5": 1.0, "mrr": 1.0}),
        (["x", "y", "z"], {"recall_at_5": 0.0, "ndcg_at_5": 0.0, "map_at_5": 0.0, "mrr": 0.0}),
    ],
)
def test_perfect_and_empty_rankings(ranking, expected):
    metrics = mean_metrics([ranking], [RELEVANT], ks=(1, 5))
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value)


def test_queries_without_relevant_items_are_skipped_not_zeroed():
    metrics = mean_metrics([RANKING, ["q"]], [RELEVANT, set()], ks=(4,))
    assert metrics["queries"] == 1
    assert metrics["mrr"] == 0.5 and metrics["precision_at_4"] == 0.5
    assert mean_metrics([["q"]], [set()]) == {}
