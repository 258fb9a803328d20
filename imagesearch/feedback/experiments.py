"""How many queries an online comparison needs: team-draft interleaving against an A/B test on
click-through rate, both run on the same simulated users (who click by held-out relevance grades
under position-biased examination; every number from here is marked simulated).

For each query count of a ladder, many simulated experiments are run; an experiment decides when its
test is significant (p < 0.05) in favour of the better ranker. The power at a count is the share of
experiments that decide; the answer is the smallest count reaching the target power (0.8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from imagesearch.feedback.interleaving import credit, ctr_test, team_draft, win_rate
from imagesearch.feedback.simulation import SimulatedQuery, clicked_ranks

Rankings = Mapping[str, Sequence[str]]  # query text -> ranked ids


@dataclass(frozen=True, slots=True)
class PowerRow:
    queries: int
    interleaving_power: float
    ab_power: float


def interleaving_decides(
    queries: Sequence[SimulatedQuery], better: Rankings, worse: Rankings, k: int, eta: float, rng
) -> bool:
    outcomes = []
    for query in queries:
        shown = team_draft(better[query.text], worse[query.text], k, rng)
        outcomes.append(credit(shown.teams, clicked_ranks(shown.ids, query.relevance, eta, rng)))
    result = win_rate(outcomes)
    return result.significant and result.rate > 0.5


def ab_decides(
    queries: Sequence[SimulatedQuery], better: Rankings, worse: Rankings, k: int, eta: float, rng
) -> bool:
    """Half the queries see the better ranker, half the worse (by a coin each); CTR = queries with a click."""
    shown, clicked = {True: 0, False: 0}, {True: 0, False: 0}
    for query in queries:
        arm = bool(rng.random() < 0.5)
        ranking = (better if arm else worse)[query.text][:k]
        shown[arm] += 1
        clicked[arm] += bool(clicked_ranks(ranking, query.relevance, eta, rng))
    p_value = ctr_test(clicked[True], shown[True], clicked[False], shown[False])
    rates = {arm: clicked[arm] / max(shown[arm], 1) for arm in shown}
    return p_value < 0.05 and rates[True] > rates[False]


def power_ladder(
    queries: Sequence[SimulatedQuery],
    better: Rankings,
    worse: Rankings,
    *,
    counts: Sequence[int],
    trials: int,
    k: int = 10,
    eta: float = 1.0,
    seed: int = 0,
) -> list[PowerRow]:
    """Each experiment samples `count` queries (with repetition: users repeat queries) and decides or not."""
    rng = np.random.default_rng(seed)
    rows = []
    for count in counts:
        decided = {"interleaving": 0, "ab": 0}
        for _ in range(trials):
            sample = [queries[i] for i in rng.integers(0, len(queries), count)]
            decided["interleaving"] += interleaving_decides(sample, better, worse, k, eta, rng)
            decided["ab"] += ab_decides(sample, better, worse, k, eta, rng)
        rows.append(PowerRow(count, decided["interleaving"] / trials, decided["ab"] / trials))
    return rows


def queries_needed(rows: Sequence[PowerRow], power: float = 0.8) -> dict[str, int | None]:
    """The smallest query count of the ladder at which each method reaches `power` (None: never)."""
    return {
        "interleaving": next((r.queries for r in rows if r.interleaving_power >= power), None),
        "ab": next((r.queries for r in rows if r.ab_power >= power), None),
    }
