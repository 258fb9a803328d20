"""Evaluation stage: metrics against values worked out by hand, held-out sets from a hand-made catalog,
the promotion rule case by case."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from imagesearch.evaluation.metrics import (
    average_precision_at_k,
    mean_metrics,
    ndcg_at_k,
    precision_at_k,
    recall_of,
    reciprocal_rank,
)
from imagesearch.evaluation.promotion import PromotionRule, decide
from imagesearch.evaluation.report import served_index_problems
from imagesearch.evaluation.sets import build_eval_sets
from imagesearch.settings import EvaluationSettings

# --- metrics --------------------------------------------------------------------------------
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


# --- evaluation --------------------------------------------------------------------------------
def catalog() -> pd.DataFrame:
    rows = [
        ("t1", "test", "animals", ["animals", "cat"], "tabby cat"),
        ("t2", "test", "animals", ["animals", "cat"], "black cat"),
        ("t3", "test", "animals", ["animals"], "dog"),
        ("t4", "test", "tools", ["tools", "cat"], "cat shaped hammer"),
        ("r1", "train", "animals", ["animals", "cat"], "training cat"),
    ]
    frame = pd.DataFrame(rows, columns=["id", "split", "category", "tags", "title"])
    return frame.assign(path=frame["id"] + ".png", tags=frame["tags"].map(np.array))


def test_sets_hold_only_test_images_with_documented_grades():
    judged = pd.DataFrame(
        {"query_text": ["kitten", "kitten"], "image_id": ["t2", "r1"], "grade": [3, 3], "query": "kitten"}
    )
    sets = build_eval_sets(catalog(), judged, max_image_queries=10, tag_max_share=1.0)
    assert set(sets.corpus["id"]) == {"t1", "t2", "t3", "t4"}
    grades = sets.image_qrels.set_index(["query_image_id", "image_id"])["grade"].to_dict()
    assert grades[("t1", "t2")] == 2  # same category, and they share "cat"
    assert grades[("t1", "t3")] == 1  # same category; "animals" is only the category's own name
    assert ("t1", "t4") not in grades and ("t1", "t1") not in grades
    text = sets.text_qrels
    assert set(text.loc[text["query"] == "cat", "image_id"]) == {"t1", "t2", "t4"}
    assert text.loc[text["origin"] == "title"].set_index("query")["image_id"]["dog"] == "t3"
    assert text.loc[text["origin"] == "judgment", "image_id"].tolist() == ["t2"]  # train image dropped
    assert "r1" not in set(sets.image_qrels["image_id"]) | set(text["image_id"])


def test_served_index_problems_name_each_failure():
    sound = {"finite": True, "vectors": 5, "catalog_images": 5, "recall_at_10_vs_exact": 0.9}
    assert served_index_problems(sound, floor=0.8) == []
    broken = {"finite": False, "vectors": 4, "catalog_images": 5, "recall_at_10_vs_exact": float("nan")}
    assert served_index_problems(broken, floor=0.8) == [
        "non-finite vectors",
        "index size differs from the catalog",
        "recall@10 vs exact below 0.8",
    ]


# --- promotion --------------------------------------------------------------------------------
RULE = PromotionRule(
    primary="text_to_image.ndcg_at_10", margin=0.01, guarded=("image_to_image.ndcg_at_10",), tolerance=0.02
)
CHAMPION = {"text_to_image.ndcg_at_10": 0.50, "image_to_image.ndcg_at_10": 0.60}


@pytest.mark.parametrize(
    ("challenger", "champion", "promote", "reason"),
    [
        ({"text_to_image.ndcg_at_10": 0.52, "image_to_image.ndcg_at_10": 0.60}, CHAMPION, True, "+0.0200"),
        ({"text_to_image.ndcg_at_10": 0.51, "image_to_image.ndcg_at_10": 0.60}, CHAMPION, True, "no guard"),
        ({"text_to_image.ndcg_at_10": 0.505, "image_to_image.ndcg_at_10": 0.70}, CHAMPION, False, "needs"),
        ({"text_to_image.ndcg_at_10": 0.45, "image_to_image.ndcg_at_10": 0.70}, CHAMPION, False, "needs"),
        ({"text_to_image.ndcg_at_10": 0.60, "image_to_image.ndcg_at_10": 0.58}, CHAMPION, True, "no guard"),
        ({"text_to_image.ndcg_at_10": 0.60, "image_to_image.ndcg_at_10": 0.57}, CHAMPION, False, "regressed"),
        ({"text_to_image.ndcg_at_10": 0.60}, CHAMPION, False, "missing"),
        ({"text_to_image.ndcg_at_10": math.nan}, CHAMPION, False, "no finite"),
        ({}, CHAMPION, False, "no finite"),
        ({"text_to_image.ndcg_at_10": 0.10}, None, True, "no champion"),
        (
            {"text_to_image.ndcg_at_10": 0.60, "image_to_image.ndcg_at_10": 0.1},
            {"text_to_image.ndcg_at_10": 0.5},
            True,
            "no guard regressed",  # the champion lacks the guarded metric: nothing to regress from
        ),
    ],
)
def test_rule(challenger, champion, promote, reason):
    decision = decide(challenger, champion, RULE)
    assert decision.promote is promote
    assert reason in decision.reason


def test_rule_from_settings_follows_the_settings():
    config = EvaluationSettings(
        primary_metric="image_to_image.map_at_10", promotion_margin=0.02, guard_tolerance=0
    )
    rule = PromotionRule.from_settings(config)
    assert (rule.primary, rule.margin, rule.tolerance) == ("image_to_image.map_at_10", 0.02, 0)
    assert rule.guarded == tuple(config.guarded_metrics)
