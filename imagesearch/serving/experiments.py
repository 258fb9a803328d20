"""Online experiments on live traffic: which slice a query falls in, and what each slice shows.

- interleaving: the champion's and the challenger's pages merged by team draft (one list shown; each
  result remembers which ranker contributed it, so a click credits that ranker);
- shadow: the champion's page is shown; the challenger answers the same query unseen, and its latency
  and top-k overlap with the champion are logged;
- swap: a randomized slice for the position-bias estimate: an adjacent pair (k, k + 1) is drawn and,
  by a coin, swapped; clicks on the same results at k and at k + 1 give the examination ratio.

Only first pages take part (a later page of a merged list would not be the same merged list).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from imagesearch.feedback.interleaving import A, team_draft
from imagesearch.serving.types import Answer
from imagesearch.settings import ExperimentSettings

INTERLEAVING, SHADOW, SWAP = "interleaving", "shadow", "swap"
CHAMPION, CHALLENGER = "champion", "challenger"


class SliceDraw:
    """Draws each query's slice by the configured shares (one uniform draw per query)."""

    def __init__(self, config: ExperimentSettings, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.bounds = np.cumsum([config.interleave_share, config.shadow_share, config.swap_share])

    def draw(self, *, has_challenger: bool, first_page: bool) -> str | None:
        if not first_page or not self.bounds[-1]:
            return None
        kind = [INTERLEAVING, SHADOW, SWAP, None][
            int(np.searchsorted(self.bounds, self.rng.random(), "right"))
        ]
        if kind in (INTERLEAVING, SHADOW) and not has_challenger:
            return None  # their share is plain traffic until a challenger is served
        return kind


@dataclass(frozen=True, slots=True)
class Shown:
    """What a slice shows and what the click log keeps of it."""

    answer: Answer
    experiment: dict | None = None  # the experiment_queries row (without the query id)
    teams: list[str] | None = None  # interleaving: who contributed each shown result
    owners: list[str] | None = None  # per shown result: CHAMPION or CHALLENGER (whose index shows it)


def interleaved(champion: Answer, challenger: Answer, challenger_version: str, k: int, rng) -> Shown:
    """Team draft of the two pages (team A is the challenger); each result keeps its own ranker's
    score and explanation."""
    by_team = {
        CHALLENGER: {r.id: r for r in challenger.results},
        CHAMPION: {r.id: r for r in champion.results},
    }
    merged = team_draft(list(by_team[CHALLENGER]), list(by_team[CHAMPION]), k, rng)
    teams = [CHALLENGER if team == A else CHAMPION for team in merged.teams]
    results = [
        replace(by_team[team][image_id], rank=rank)
        for rank, (image_id, team) in enumerate(zip(merged.ids, teams, strict=True), start=1)
    ]
    answer = replace(champion, results=results, total=max(champion.total, challenger.total))
    experiment = {"kind": INTERLEAVING, "challenger_version": challenger_version}
    return Shown(answer, experiment, teams, owners=teams)


def shadowed(answer: Answer, challenger_version: str) -> Shown:
    """The champion's page as it is; the challenger's unseen answer is logged when it comes."""
    return Shown(answer, {"kind": SHADOW, "challenger_version": challenger_version})


def swapped(answer: Answer, rng) -> Shown:
    """The randomized slice: a pair (k, k + 1) drawn uniformly, swapped when a coin says so."""
    results = list(answer.results)
    if len(results) < 2:
        return Shown(answer)
    k = int(rng.integers(1, len(results)))  # ranks from 1: the pair (k, k + 1)
    swap = bool(rng.random() < 0.5)
    if swap:
        results[k - 1], results[k] = results[k], results[k - 1]
        results = [replace(result, rank=rank) for rank, result in enumerate(results, start=1)]
    experiment = {"kind": SWAP, "challenger_version": None, "swap_rank": k, "swapped": swap}
    return Shown(replace(answer, results=results), experiment)


def overlap_at_k(first: Answer, second: Answer) -> float:
    """Shared ids of two pages over the first page's length (1.0 for two empty pages)."""
    if not first.results:
        return 1.0
    return len({r.id for r in first.results} & {r.id for r in second.results}) / len(first.results)
