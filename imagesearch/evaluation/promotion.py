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


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    rule: PromotionRule,
    intervals: dict[str, dict[str, float]] | None = None,
) -> Decision:
    """Promote only when the primary metric beats the champion's by `margin` and no guard regresses.

    `intervals` (guarded metric -> paired difference, 95% low/high, queries; the evaluation's
    `guards`) only inform the reason: a regression's interval, and the passing guards whose interval
    still reaches below -tolerance, where the queries cannot rule out a loss beyond the tolerance."""
    intervals = intervals or {}
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
                f"(tolerance {rule.tolerance:g}{_interval(intervals.get(name))})",
            )
    unsure = [n for n in rule.guarded if n in intervals and intervals[n]["low"] < -rule.tolerance]
    listed = ", ".join(_unsure(name, intervals[name]) for name in unsure)
    caveat = f"; a loss beyond the tolerance not ruled out on {listed}" if unsure else ""
    return Decision(
        True, f"{rule.primary} {new:.4f} vs champion {old:.4f} (+{new - old:.4f}); no guard regressed{caveat}"
    )


def _interval(found: dict[str, float] | None) -> str:
    if not found:
        return ""
    return (
        f"; paired difference {found['difference']:+.4f}, 95% interval "
        f"[{found['low']:+.4f}, {found['high']:+.4f}] over {int(found['queries'])} queries"
    )


def _unsure(name: str, found: dict[str, float]) -> str:
    return f"{name} ([{found['low']:+.3f}, {found['high']:+.3f}] over {int(found['queries'])} queries)"


# --- the online stage: after the offline gate, the interleaving experiment and its guardrails -------
@dataclass(frozen=True, slots=True)
class OnlineRule:
    min_queries: int  # interleaved queries with a winner needed before deciding online
    require_win: bool  # True: a significant win; False: no significant loss is enough
    tolerance: float  # guardrails: the challenger's CTR may trail, its abandonment exceed, by this much

    @classmethod
    def from_settings(cls, config: EvaluationSettings) -> OnlineRule:
        return cls(config.online_min_queries, config.online_require_win, config.online_guard_tolerance)


@dataclass(frozen=True, slots=True)
class OnlineEvidence:
    """An interleaving experiment of the challenger (team A) against the champion (team B), and each
    arm's guardrail metrics on the traffic it served."""

    wins_challenger: int
    wins_champion: int
    p_value: float
    ctr: tuple[float, float]  # (challenger, champion)
    abandonment: tuple[float, float]
    simulated: bool = False  # from simulated users (no real traffic yet): said in every reason

    def as_tags(self) -> dict[str, str]:
        """The numbers a decision rests on, as tags of the model version."""
        decided = self.wins_challenger + self.wins_champion
        return {
            "online.queries_decided": str(decided),
            "online.win_rate": f"{self.wins_challenger / decided:.4f}" if decided else "n/a",
            "online.p_value": f"{self.p_value:.4g}",
            "online.ctr": f"challenger {self.ctr[0]:.4f}, champion {self.ctr[1]:.4f}",
            "online.abandonment": f"challenger {self.abandonment[0]:.4f}, champion {self.abandonment[1]:.4f}",
            "online.simulated": str(self.simulated).lower(),
        }


def decide_online(offline: Decision, evidence: OnlineEvidence | None, rule: OnlineRule) -> Decision:
    """The offline decision, then the online stage: enough decided queries, a significant win (or no
    significant loss, by `require_win`), and guardrails held."""
    if not offline.promote:
        return offline
    decided = 0 if evidence is None else evidence.wins_challenger + evidence.wins_champion
    if evidence is None or decided < rule.min_queries:
        return Decision(
            False,
            f"offline passed; waiting for the online experiment ({decided} of {rule.min_queries} queries)",
        )
    rate, significant = evidence.wins_challenger / decided, evidence.p_value < 0.05
    online = f"interleaving win rate {rate:.3f} over {decided} queries (p = {evidence.p_value:.3g})"
    online += " (simulated traffic)" if evidence.simulated else ""
    if rule.require_win and not (significant and rate > 0.5):
        return Decision(False, f"{online}: no significant win")
    if significant and rate < 0.5:
        return Decision(False, f"{online}: a significant loss")
    problem = guardrail_problem(evidence.ctr, evidence.abandonment, rule.tolerance)
    if problem:
        return Decision(False, f"{online}; guardrail: {problem}")
    return Decision(True, f"{offline.reason}; {online}; guardrails held")


def guardrail_problem(
    ctr: tuple[float, float], abandonment: tuple[float, float], tolerance: float
) -> str | None:
    """What a (new, reference) pair of guardrail readings says is wrong, or None."""
    if ctr[0] < ctr[1] - tolerance:
        return f"CTR {ctr[0]:.3f} vs {ctr[1]:.3f} (tolerance {tolerance:g})"
    if abandonment[0] > abandonment[1] + tolerance:
        return f"abandonment {abandonment[0]:.3f} vs {abandonment[1]:.3f} (tolerance {tolerance:g})"
    return None


@dataclass(frozen=True, slots=True)
class Rollback:
    roll_back: bool
    reason: str


def decide_rollback(after: tuple[float, float], before: tuple[float, float], tolerance: float) -> Rollback:
    """Roll a promoted champion back when its guardrails ((CTR, abandonment) since the promotion)
    degraded against its predecessor's (before it)."""
    problem = guardrail_problem((after[0], before[0]), (after[1], before[1]), tolerance)
    if problem:
        return Rollback(True, f"guardrail degraded after promotion: {problem}")
    return Rollback(False, "guardrails held after promotion")
