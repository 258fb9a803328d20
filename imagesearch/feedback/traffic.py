"""Simulated users of a running search service, over its HTTP API: each types a held-out query, is
shown whatever page the service serves (plain, interleaved, shadowed or swapped: it cannot tell),
examines rank r with probability (1/r)**eta and clicks a result by its relevance grade (the held-out
query's rule applied to every image the service can show).
Every request carries the simulated header, so the click log keeps this traffic apart from real users'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from imagesearch.evaluation.sets import EvalSets, whole_catalog_text_qrels
from imagesearch.feedback.log_schema import SIMULATED_HEADER
from imagesearch.feedback.simulation import SimulatedQuery, clicked_ranks


class HttpClient(Protocol):
    """What is needed of an HTTP client: httpx.Client(base_url=...) or Starlette's TestClient."""

    def post(self, url: str, **kwargs): ...


@dataclass(frozen=True, slots=True)
class TrafficReport:
    queries: int
    clicks: int
    failed: int  # requests answered with an error status


def held_out_queries(
    sets: EvalSets, catalog: pd.DataFrame | None = None, grades: int = 3
) -> list[SimulatedQuery]:
    """The text queries of held-out evaluation sets, each with its relevant images and grades
    (scaled so the best grade is `grades`: the simulator clicks with grade / 3). With `catalog`,
    relevance covers every image of the catalog the service searches (`whole_catalog_text_qrels`)."""
    qrels = sets.text_qrels if catalog is None else whole_catalog_text_qrels(sets.text_qrels, catalog)
    top = max(int(qrels["grade"].max()), 1) if len(qrels) else 1
    return [
        SimulatedQuery(
            str(text),
            {
                str(i): max(1, round(g * grades / top))
                for i, g in zip(group["image_id"], group["grade"], strict=True)
            },
        )
        for text, group in qrels.groupby("query")
    ]


def simulate_traffic(
    client: HttpClient,
    queries: Sequence[SimulatedQuery],
    *,
    sessions: int,
    eta: float = 1.0,
    k: int = 10,
    seed: int = 0,
) -> TrafficReport:
    """`sessions` simulated users, each with one query drawn at random (users repeat queries)."""
    rng = np.random.default_rng(seed)
    headers = {SIMULATED_HEADER: "1"}
    clicks = failed = 0
    for _ in range(sessions):
        query = queries[int(rng.integers(len(queries)))]
        response = client.post("/search", json={"text": query.text, "k": k}, headers=headers)
        if response.status_code != 200:
            failed += 1
            continue
        page = response.json()
        shown = [result["id"] for result in page["results"]]
        for rank in clicked_ranks(shown, query.relevance, eta, rng):
            event = {"query_id": page["query_id"], "rank": rank}
            failed += client.post("/events", json=event, headers=headers).status_code != 201
            clicks += 1
    return TrafficReport(sessions, clicks, failed)
