"""Online comparison of two rankers: team-draft interleaving, its win-rate statistics, and the A/B test
on click-through rate it is measured against (pure functions; the simulation drives them in tests).

Team-draft interleaving (Radlinski, Kurup and Joachims, CIKM 2008): like captains picking teams, the
ranker with fewer picks so far (a coin decides ties) adds its best result not yet shown; a click is
credited to the team that contributed the clicked result, and the ranker with more credited clicks
wins the query. Both rankers are judged by the same user on the same query, which is why it needs far
fewer queries than comparing two groups of users' click-through rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, fisher_exact

A, B = "A", "B"


@dataclass(frozen=True, slots=True)
class Interleaving:
    ids: list[str]  # the merged list shown, best first
    teams: list[str]  # per position: the ranker that contributed it (A or B)


def team_draft(first: Sequence[str], second: Sequence[str], k: int, rng: np.random.Generator) -> Interleaving:
    """The merged top-k of rankers A (`first`) and B (`second`)."""
    rankings, picks = {A: list(first), B: list(second)}, {A: 0, B: 0}
    ids: list[str] = []
    teams: list[str] = []
    shown: set[str] = set()
    while len(ids) < k:
        tie = picks[A] == picks[B]
        team = (A if rng.random() < 0.5 else B) if tie else min(picks, key=picks.get)
        pick = _next_unshown(rankings[team], shown)
        if pick is None:  # this ranker has nothing left to add: the other one picks
            team = B if team == A else A
            pick = _next_unshown(rankings[team], shown)
            if pick is None:
                break
        ids.append(pick)
        teams.append(team)
        shown.add(pick)
        picks[team] += 1
    return Interleaving(ids, teams)


def _next_unshown(ranking: list[str], shown: set[str]) -> str | None:
    return next((item for item in ranking if item not in shown), None)


def credit(teams: Sequence[str], clicked_ranks: Sequence[int]) -> str | None:
    """The winner of one interleaved query (A, B, or None for a tie or no click); ranks from 1."""
    clicks = {A: 0, B: 0}
    for rank in clicked_ranks:
        clicks[teams[rank - 1]] += 1
    if clicks[A] == clicks[B]:
        return None
    return A if clicks[A] > clicks[B] else B


@dataclass(frozen=True, slots=True)
class WinRate:
    wins_a: int
    wins_b: int
    ties: int
    rate: float  # A's share of the decided queries
    low: float  # 95% confidence interval of that share (Clopper-Pearson)
    high: float
    p_value: float  # two-sided, against no preference (0.5)

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


def win_rate(outcomes: Sequence[str | None]) -> WinRate:
    """A's win rate over the queries with a winner, with its exact binomial interval and p-value."""
    wins_a, wins_b = outcomes.count(A), outcomes.count(B)
    decided = wins_a + wins_b
    if not decided:
        return WinRate(0, 0, len(outcomes), 0.5, 0.0, 1.0, 1.0)
    test = binomtest(wins_a, decided, 0.5)
    interval = test.proportion_ci(0.95)
    return WinRate(
        wins_a, wins_b, len(outcomes) - decided, wins_a / decided, interval.low, interval.high, test.pvalue
    )


def ctr_test(clicked_a: int, shown_a: int, clicked_b: int, shown_b: int) -> float:
    """Two-sided p-value that arms A and B differ in click-through rate (queries with a click over
    queries shown), by Fisher's exact test: the A/B test interleaving is compared with."""
    table = [[clicked_a, shown_a - clicked_a], [clicked_b, shown_b - clicked_b]]
    return float(fisher_exact(table).pvalue)
