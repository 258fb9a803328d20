"""The champion/challenger promotion rule: a pure function of two metric dicts.

Metric names are "<query type>.<metric>", e.g. "text_to_image.ndcg_at_10".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from imagesearch.settings import EvaluationSettings


@dataclass(frozen=True, slots=True)
class PromotionRule:
    primary: str  # "<query type>.<metric>" the challenger must improve
    margin: float  # absolute gain the challenger needs on the primary metric
    guarded: tuple[str, ...]  # metrics that may not regress by more than `tolerance`
    tolerance: float  # absolute loss allowed on each guarded metric

    @classmethod
    def from_settings(cls, config: EvaluationSettings) -> PromotionRule:
        """The rule the settings describe (their defaults are the project's defaults: one place)."""
        return cls(
            config.primary_metric,
            config.promotion_margin,
            tuple(config.guarded_metrics),
            config.guard_tolerance,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    promote: bool
    reason: str


def decide(challenger: dict[str, float], champion: dict[str, float] | None, rule: PromotionRule) -> Decision:
    """Promote only when the primary metric beats the champion's by `margin` and no guard regresses."""
    new = challenger.get(rule.primary)
    if new is None or not math.isfinite(new):
        return Decision(False, f"the challenger has no finite {rule.primary}")
    if champion is None:
        return Decision(True, f"no champion yet; challenger {rule.primary} = {new:.4f}")
    old = champion.get(rule.primary)
    if old is None or not math.isfinite(old):
        return Decision(True, f"the champion has no {rule.primary}; challenger {new:.4f}")
    if new < old + rule.margin:
        return Decision(
            False, f"{rule.primary} {new:.4f} vs champion {old:.4f}: needs at least +{rule.margin:g}"
        )
    for name in rule.guarded:
        mine, theirs = challenger.get(name), champion.get(name)
        if theirs is None or not math.isfinite(theirs):
            continue
        if mine is None or not math.isfinite(mine):
            return Decision(False, f"guarded {name} is missing for the challenger")
        if mine < theirs - rule.tolerance:
            return Decision(
                False,
                f"guarded {name} regressed: {mine:.4f} vs champion {theirs:.4f} "
                f"(tolerance {rule.tolerance:g})",
            )
    return Decision(
        True, f"{rule.primary} {new:.4f} vs champion {old:.4f} (+{new - old:.4f}); no guard regressed"
    )
