"""The champion/challenger promotion rule: a pure function of two metric dicts.

Metric names are "<query type>.<metric>", e.g. "text_to_image.ndcg_at_10".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from imagesearch.settings import EvaluationSettings
from imagesearch.settings.judging import GuardTestKind


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
class GuardrailReading:
    """One guardrail of a new side against its reference, and the standard error of their
    difference (None where it is not known: a report written before it was recorded)."""

    name: str
    new: float
    reference: float
    standard_error: float | None = None
    higher_is_better: bool = True

    @property
    def loss(self) -> float:
        """How much worse the new side reads than the reference (positive: worse)."""
        gap = self.reference - self.new
        return gap if self.higher_is_better else -gap


@dataclass(frozen=True, slots=True)
class GuardTest:
    """When a guardrail reading counts as a regression beyond `tolerance`:

    - "point": its point estimate is past the tolerance (noise of the size of the tolerance flips it);
    - "harm": a one-sided test at `alpha` shows the loss is past the tolerance (the lower bound of the
      loss is above it): a guardrail stops a promotion on evidence, not on noise;
    - "non_inferiority": the loss's upper bound is within the tolerance, or it stops the promotion
      (needs enough traffic to bound the loss that tightly).
    A reading without a standard error is judged by its point estimate."""

    tolerance: float
    kind: GuardTestKind = "harm"
    alpha: float = 0.05

    def problem(self, reading: GuardrailReading) -> str | None:
        """What is wrong with this reading, or None."""
        said = f"{reading.name} {reading.new:.3f} vs {reading.reference:.3f} (tolerance {self.tolerance:g})"
        error = reading.standard_error
        if self.kind == "point" or error is None or not math.isfinite(error):
            return said if reading.loss > self.tolerance else None
        z = NormalDist().inv_cdf(1 - self.alpha)
        low, high = reading.loss - z * error, reading.loss + z * error
        if self.kind == "harm" and low > self.tolerance:
            return f"{said}: a loss of at least {low:.3f} shown ({1 - self.alpha:.0%} one-sided)"
        if self.kind == "non_inferiority" and high > self.tolerance:
            return f"{said}: a loss up to {high:.3f} not ruled out ({1 - self.alpha:.0%} one-sided)"
        return None

    def first_problem(self, readings: Sequence[GuardrailReading]) -> str | None:
        return next(filter(None, map(self.problem, readings)), None)

    def describe(self) -> str:
        if self.kind == "point":
            return f"no point estimate past the tolerance {self.tolerance:g}"
        shown = "shown" if self.kind == "harm" else "not ruled out"
        return f"no loss beyond {self.tolerance:g} {shown} at alpha {self.alpha:g}"


@dataclass(frozen=True, slots=True)
class OnlineRule:
    min_queries: int  # interleaved queries with a winner needed before deciding online
    require_win: bool  # True: a significant win; False: no significant loss is enough
    guard: GuardTest  # when the challenger's CTR trails, or its abandonment exceeds, the champion's

    @classmethod
    def from_settings(cls, config: EvaluationSettings) -> OnlineRule:
        guard = GuardTest(config.online_guard_tolerance, config.online_guard_test, config.online_guard_alpha)
        return cls(config.online_min_queries, config.online_require_win, guard)


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
    # standard errors of the (challenger - champion) CTR and abandonment differences
    standard_errors: tuple[float | None, float | None] = (None, None)

    def readings(self) -> list[GuardrailReading]:
        return guardrail_readings(self.ctr, self.abandonment, self.standard_errors)

    def as_tags(self) -> dict[str, str]:
        """The numbers a decision rests on, as tags of the model version."""
        decided = self.wins_challenger + self.wins_champion
        return {
            "online.queries_decided": str(decided),
            "online.win_rate": f"{self.wins_challenger / decided:.4f}" if decided else "n/a",
            "online.p_value": f"{self.p_value:.4g}",
            "online.ctr": f"challenger {self.ctr[0]:.4f}, champion {self.ctr[1]:.4f}",
            "online.abandonment": f"challenger {self.abandonment[0]:.4f}, champion {self.abandonment[1]:.4f}",
            "online.guardrail_standard_errors": ", ".join(
                f"{name} {'n/a' if error is None else f'{error:.4f}'}"
                for name, error in zip(("CTR", "abandonment"), self.standard_errors, strict=True)
            ),
            "online.simulated": str(self.simulated).lower(),
        }


def guardrail_readings(
    ctr: tuple[float, float],
    abandonment: tuple[float, float],
    standard_errors: tuple[float | None, float | None] = (None, None),
) -> list[GuardrailReading]:
    """The two guardrails from (new, reference) pairs and their differences' standard errors."""
    return [
        GuardrailReading("CTR", *ctr, standard_errors[0]),
        GuardrailReading("abandonment", *abandonment, standard_errors[1], higher_is_better=False),
    ]


def decide_online(offline: Decision, evidence: OnlineEvidence | None, rule: OnlineRule) -> Decision:
    """The offline decision, then the online stage: enough decided queries, a significant win (or no
    significant loss, by `require_win`), and guardrails held (by `rule.guard`)."""
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
    problem = rule.guard.first_problem(evidence.readings())
    if problem:
        return Decision(False, f"{online}; guardrail: {problem}")
    return Decision(True, f"{offline.reason}; {online}; guardrails held ({rule.guard.describe()})")


@dataclass(frozen=True, slots=True)
class Rollback:
    roll_back: bool
    reason: str


def decide_rollback(readings: Sequence[GuardrailReading], guard: GuardTest) -> Rollback:
    """Roll a promoted champion back when its guardrails since the promotion (new) degraded against
    its predecessor's before it (reference)."""
    problem = guard.first_problem(readings)
    if problem:
        return Rollback(True, f"guardrail degraded after promotion: {problem}")
    return Rollback(False, f"guardrails held after promotion ({guard.describe()})")
