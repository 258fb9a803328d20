"""The promotion rule, case by case."""

from __future__ import annotations

import math

import pytest

from imagesearch.evaluation.promotion import PromotionRule, decide
from imagesearch.settings import EvaluationSettings

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
