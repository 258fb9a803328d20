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
    paired_difference,
    per_query_metric,
    precision_at_k,
    recall_of,
    reciprocal_rank,
)
from imagesearch.evaluation.promotion import PromotionRule, decide
from imagesearch.evaluation.ranking import ModelRankings, guard_differences, per_query_values, score_rankings
from imagesearch.evaluation.report import served_index_problems
from imagesearch.evaluation.sets import (
    author_tokens,
    build_eval_sets,
    collection_sets,
    strip_authors,
    whole_catalog_text_qrels,
)
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


def test_whole_catalog_judgments_apply_the_held_out_rules_to_every_image():
    """What simulated users of a service over the whole catalog click: the held-out queries, with a
    training image relevant by the same rule as a test image (its tag, its title)."""
    frame = pd.concat(
        [
            catalog(),
            catalog().iloc[[2]].assign(id="r2", split="train", path="r2.png", tags=[np.array(["pet"])]),
        ]
    )
    judged = pd.DataFrame({"query_text": ["kitten"], "image_id": ["t2"], "grade": [3], "query": "kitten"})
    sets = build_eval_sets(frame, judged, max_image_queries=10, tag_max_share=1.0)
    whole = whole_catalog_text_qrels(sets.text_qrels, frame)
    assert set(whole["query"]) == set(sets.text_qrels["query"])  # no new queries
    relevant = whole.groupby("query")["image_id"].apply(set)
    assert relevant["cat"] == {"t1", "t2", "t4", "r1"}  # the training image carrying the tag
    assert relevant["dog"] == {"t3", "r2"}  # and the one with the same title
    assert relevant["kitten"] == {"t2"}  # judged queries stay as judged
    grades = whole.set_index(["query", "image_id"])["grade"]
    assert grades["dog", "r2"] == grades["dog", "t3"] == 2 and grades["cat", "r1"] == 1


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


def test_decisions_carry_the_guards_paired_intervals():
    """The interval informs the reason: a regression shows it, and a pass names every guard whose
    interval cannot rule out a loss beyond the tolerance."""
    wide = {"image_to_image.ndcg_at_10": {"difference": -0.03, "low": -0.09, "high": 0.03, "queries": 25}}
    lost, held = (
        {"text_to_image.ndcg_at_10": 0.60, "image_to_image.ndcg_at_10": guard} for guard in (0.57, 0.60)
    )
    regressed = decide(lost, CHAMPION, RULE, wide)
    assert not regressed.promote
    assert "paired difference -0.0300, 95% interval [-0.0900, +0.0300] over 25 queries" in regressed.reason
    passed = decide(held, CHAMPION, RULE, wide)
    assert passed.promote
    assert passed.reason.endswith(
        "a loss beyond the tolerance not ruled out on image_to_image.ndcg_at_10 "
        "([-0.090, +0.030] over 25 queries)"
    )
    narrow = {"image_to_image.ndcg_at_10": {"difference": 0.1, "low": -0.01, "high": 0.2, "queries": 500}}
    assert decide(held, CHAMPION, RULE, narrow).reason.endswith("no guard regressed")


def test_per_query_values_average_to_the_reported_metric_and_pair_up():
    sets = build_eval_sets(catalog(), None, max_image_queries=10, tag_max_share=1.0)
    good = ModelRankings({}, {q: ["t1", "t2", "t4", "t3"] for q in sets.text_qrels["query"]})
    poor = ModelRankings({}, {q: ["t3", "t4", "t2", "t1"] for q in sets.text_qrels["query"]})
    for kind in ("text_to_image", "text_to_image/title"):
        values = per_query_values(sets, good, kind, "ndcg_at_10")
        assert values.mean() == pytest.approx(score_rankings(sets, good)[kind]["ndcg_at_10"])
    guards = guard_differences(
        ["text_to_image.ndcg_at_10", "elsewhere:text_to_image.ndcg_at_10"], {"": good}, {"": poor}, {"": sets}
    )
    assert list(guards) == ["text_to_image.ndcg_at_10"]  # a collection without rankings is skipped
    found = guards["text_to_image.ndcg_at_10"]
    assert found["queries"] == sets.text_qrels["query"].nunique()
    assert found["low"] <= found["difference"] <= found["high"]


def test_paired_intervals_separate_a_consistent_gain_from_noise():
    rng = np.random.default_rng(0)
    old = rng.uniform(0, 1, 400)
    consistent = paired_difference(old + 0.02 + rng.normal(0, 0.01, 400), old)
    assert 0 < consistent[1] < 0.02 < consistent[2] < 0.03
    few = paired_difference(old[:25] + rng.normal(0, 0.25, 25), old[:25])
    assert few[1] < 0 < few[2] and few[2] - few[1] > 0.1  # 25 noisy queries: a wide interval around 0
    assert paired_difference(old, old) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="no per-query form"):
        per_query_metric("mrr", [["a"]], [{"a"}])


def test_rule_from_settings_follows_the_settings():
    config = EvaluationSettings(
        primary_metric="image_to_image.map_at_10", promotion_margin=0.02, guard_tolerance=0
    )
    rule = PromotionRule.from_settings(config)
    assert (rule.primary, rule.margin, rule.tolerance) == ("image_to_image.map_at_10", 0.02, 0)
    assert rule.guarded == tuple(config.guarded_metrics)


def test_an_overfit_challenger_is_refused_for_its_out_of_domain_loss():
    """Wins in-domain by a wide margin, loses on one out-of-domain collection: the default rule refuses
    it and says which out-of-domain metric regressed."""
    champion = {
        "text_to_image.ndcg_at_10": 0.10,
        "text_to_image.recall_at_10": 0.20,
        "image_to_image.ndcg_at_10": 0.60,
        "fashion-mnist:image_to_image.ndcg_at_10": 0.55,
        "fashion-mnist:text_to_image.ndcg_at_10": 0.40,
        "gcompris:image_to_image.ndcg_at_10": 0.50,
        "gcompris:text_to_image.ndcg_at_10": 0.30,
    }
    overfit = champion | {
        "text_to_image.ndcg_at_10": 0.30,
        "text_to_image.recall_at_10": 0.45,
        "image_to_image.ndcg_at_10": 0.67,
        "gcompris:text_to_image.ndcg_at_10": 0.12,
    }
    rule = PromotionRule.from_settings(EvaluationSettings())
    decision = decide(overfit, champion, rule)
    assert not decision.promote
    assert "gcompris:text_to_image.ndcg_at_10 regressed" in decision.reason
    assert decide(overfit | {"gcompris:text_to_image.ndcg_at_10": 0.295}, champion, rule).promote


def test_title_queries_lose_the_author_names_that_end_them():
    rows = [
        ("food", "red apple dan gerhards"),
        ("space", "full moon dan gerhards"),
        ("tools", "hammer dan gerhards"),
        ("food", "green apple"),
        ("food", "apple pie"),
        ("tools", "saw"),
    ]
    catalog = pd.DataFrame(rows, columns=["category", "title"]).assign(tags=[["food"]] * 6)
    authors = author_tokens(catalog)
    assert authors == {"dan", "gerhards"}
    assert strip_authors("red apple dan gerhards", authors) == "red apple"
    assert strip_authors("dan the man", authors) == "dan the man"  # only from the end
    test_split = catalog.assign(id=[f"i{n}" for n in range(6)], path="x.png", split="test")
    for drop, hammer in ((True, "hammer"), (False, "hammer dan gerhards")):  # round one kept them
        titles = build_eval_sets(test_split, drop_authors=drop).text_qrels.query("origin == 'title'")
        assert hammer in set(titles["query"])


def test_collection_sets_judge_by_label_and_caption(tmp_path):
    manifest = pd.DataFrame(
        [
            ("a/1.png", "hammer", "a", "a", "a tool", "test"),
            ("a/2.png", "saw", "a", "a", "a tool", "test"),
            ("b/1.png", "trout", "b", "b", "a fish", "test"),
            ("b/2.png", "trout", "b", "b", "a fish", "test"),
            ("x/1.png", "chair", "other", "", "", "test"),
            ("a/3.png", "pliers", "a", "a", "a tool", "val"),
        ],
        columns=["path", "caption", "tags", "label", "label_text", "split"],
    )
    sets = collection_sets(manifest, tmp_path, "test")
    assert len(sets.corpus) == 5 and "a/3.png" not in set(sets.corpus["id"])
    assert sets.corpus["path"].iloc[0] == str(tmp_path / "a/1.png")
    pairs = set(zip(sets.image_qrels["query_image_id"], sets.image_qrels["image_id"], strict=True))
    assert ("a/1.png", "a/2.png") in pairs and not any("x/1.png" in pair for pair in pairs)
    text = sets.text_qrels
    assert set(text.loc[text["query"] == "a tool", "image_id"]) == {"a/1.png", "a/2.png"}
    assert set(text.loc[text["query"] == "trout", "image_id"]) == {"b/1.png", "b/2.png"}
    assert set(text.loc[text["origin"] == "caption", "grade"]) == {2}
