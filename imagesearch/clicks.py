"""Clicks as training data: a position-biased click simulator and the click -> label rules.

Users look at rank r with probability (1/r)**eta (the position-based model), so a click at rank 8
is rarer than one at rank 1 for equally relevant results. `click_pairs` weights every click by the
inverse of that examination probability (inverse propensity weighting), which removes the bias in
expectation, and pairs it with the highest-ranked result the user skipped above it as a negative.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from imagesearch.clicklog import ClickLog, LogTables
from imagesearch.training_data import TRAIN, examples_frame, tag_text

Ranker = Callable[[str], Sequence[tuple[str, float]]]  # query text -> ranked (image id, score)


@dataclass(frozen=True, slots=True)
class SimulatedQuery:
    text: str
    relevance: Mapping[str, int]  # image id -> grade 1..3 (absent = not relevant)


def examination_probability(rank: np.ndarray | int, eta: float) -> np.ndarray:
    return np.power(np.asarray(rank, dtype=float), -eta)


def simulate_clicks(
    log: ClickLog,
    queries: Sequence[SimulatedQuery],
    ranker: Ranker,
    *,
    sessions: int,
    eta: float,
    model_version: str,
    noise: float = 0.02,
    seed: int = 0,
) -> int:
    """Simulated users: each examines rank r with (1/r)**eta, clicks a relevant result with grade/3.

    Non-relevant examined results are clicked with probability `noise`. Returns the clicks written.
    """
    rng = np.random.default_rng(seed)
    written = 0
    for query in queries:
        results = list(ranker(query.text))
        if not results:
            continue
        ranks = np.arange(1, len(results) + 1)
        click_probability = np.array(
            [query.relevance.get(image_id, 0) / 3 or noise for image_id, _ in results], dtype=float
        )
        for _ in range(sessions):
            query_id = log.log_query(
                results, model_version=model_version, query_text=query.text, simulated=True
            )
            examined = rng.random(len(ranks)) < examination_probability(ranks, eta)
            clicked = examined & (rng.random(len(ranks)) < click_probability)
            for rank in ranks[clicked]:
                log.log_click(query_id, int(rank))
                written += 1
    return written


def tag_queries(catalog: pd.DataFrame, *, count: int, seed: int, min_images: int = 3) -> list[SimulatedQuery]:
    """Queries a user might type: tag names, relevant = every catalog image with that tag (grade 3)."""
    exploded = catalog[["id", "tags"]].explode("tags").dropna(subset=["tags"])
    groups = exploded.groupby(exploded["tags"].astype(str))["id"].apply(list)
    groups = groups[groups.map(len) >= min_images]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(groups), size=min(count, len(groups)), replace=False) if len(groups) else []
    return [
        SimulatedQuery(tag_text(groups.index[i]), dict.fromkeys(groups.iloc[i], 3)) for i in sorted(chosen)
    ]


def click_pairs(tables: LogTables, catalog: pd.DataFrame, *, eta: float, max_weight: float) -> pd.DataFrame:
    """Clicked results -> positives (IPW weight), the highest skipped result above -> negative.

    Text queries pair the clicked image with the query text; image queries whose image is in the
    catalog pair the two images. Only train-split images become examples.
    """
    if tables.clicks.empty:
        return examples_frame([])
    train_ids = set(catalog.loc[catalog["split"] == TRAIN, "id"])
    clicked = tables.clicks.drop_duplicates(["query_id", "rank"])
    shown = tables.impressions.merge(
        clicked[["query_id", "rank"]].assign(clicked=True), on=["query_id", "rank"], how="left"
    )
    shown["clicked"] = shown["clicked"].astype("boolean").fillna(False).astype(bool)
    queries = tables.queries.set_index("query_id")
    rows = []
    for query_id, results in shown.sort_values("rank").groupby("query_id", sort=False):
        query = queries.loc[query_id]
        skipped_above: list[str] = []
        for result in results.itertuples():
            if not result.clicked:
                skipped_above.append(result.image_id)
                continue
            weight = min(1.0 / float(examination_probability(result.rank, eta)), max_weight)
            row = _click_row(query, result.image_id, weight, skipped_above[0] if skipped_above else None)
            if row is not None:
                rows.append(row)
    frame = examples_frame(rows)
    used = [frame[c].isna() | frame[c].isin(train_ids) for c in ("anchor_id", "positive_id", "negative_id")]
    keep = used[0] & used[1] & used[2]
    return examples_frame(frame[keep.to_numpy(dtype=bool)])


def _click_row(query: pd.Series, image_id: str, weight: float, negative: str | None) -> dict | None:
    common = {"negative_id": negative, "weight": weight, "source": "clicks"}
    if isinstance(query["query_text"], str) and query["query_text"].strip():
        return {"anchor_id": image_id, "positive_text": query["query_text"], **common}
    if isinstance(query["query_image_hash"], str):
        # the query image's content hash is its catalog id when the image is in the catalog
        return {"anchor_id": query["query_image_hash"], "positive_id": image_id, **common}
    return None
