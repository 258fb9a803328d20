"""Simulated users: position-biased clicks on a real ranker, for when the click log is still empty.

Users look at rank r with probability (1/r)**eta (the position-based model) and click what they look
at with a probability that grows with its relevance grade (known here: shared tags). The click ->
label rules in `training_data.clicks` undo the same position bias by inverse propensity weighting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from imagesearch.feedback.clicklog import ClickLog
from imagesearch.index.store import load_index
from imagesearch.models import registry
from imagesearch.models.onnx_runtime import FLOAT32
from imagesearch.settings import Settings
from imagesearch.training_data.examples import (
    tag_text,
)

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
        for _ in range(sessions):
            query_id = log.log_query(
                results, model_version=model_version, query_text=query.text, simulated=True
            )
            for rank in clicked_ranks([i for i, _ in results], query.relevance, eta, rng, noise):
                log.log_click(query_id, rank)
                written += 1
    return written


def clicked_ranks(
    shown: Sequence[str],
    relevance: Mapping[str, int],
    eta: float,
    rng: np.random.Generator,
    noise: float = 0.02,
) -> list[int]:
    """One simulated user's clicks on a shown list (ranks from 1): rank r is examined with (1/r)**eta,
    an examined result clicked with grade/3, or `noise` when not relevant."""
    ranks = np.arange(1, len(shown) + 1)
    click_probability = np.array([relevance.get(image_id, 0) / 3 or noise for image_id in shown], dtype=float)
    examined = rng.random(len(ranks)) < examination_probability(ranks, eta)
    return [int(r) for r in ranks[examined & (rng.random(len(ranks)) < click_probability)]]


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


def simulate_workspace_clicks(settings: Settings, log: ClickLog, catalog: pd.DataFrame) -> int:
    """Position-biased simulated clicks on the workspace's real index (relevance: shared tags).

    The queries are encoded with the float text graph whatever the service's `text_precision`: these
    clicks become training pairs, and a serving knob must not change what a model is trained on (an
    int8 default once gave a fresh demo other clicks and a challenger that lost its in-domain gain)."""
    loaded = load_index(settings.search_index_dir)
    encoder = registry.load_encoder(loaded.manifest.model, settings, text_precision=FLOAT32)
    config = settings.training_data

    def ranker(text: str) -> list[tuple[str, float]]:
        scores, positions = loaded.search(encoder.encode_texts([text]), config.simulated_depth)
        pairs = zip(scores[0], positions[0], strict=True)
        return [(str(loaded.ids.at[int(p), "id"]), float(s)) for s, p in pairs if p >= 0]

    queries = tag_queries(catalog, count=config.simulated_queries, seed=config.seed)
    return simulate_clicks(
        log,
        queries,
        ranker,
        sessions=config.simulated_sessions,
        eta=config.propensity_eta,
        model_version=f"simulated:{loaded.manifest.model}",
        seed=config.seed,
    )


def swapped_click_rates(
    queries: Sequence[SimulatedQuery],
    rankings: Mapping[str, Sequence[str]],
    *,
    sessions: int,
    eta: float,
    depth: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """A randomized slice of simulated traffic: each session swaps one random adjacent pair (k, k+1)
    of the shown list. Per (k, shown at), the clicks and impressions of the results originally at k:
    what `estimate_eta` reads."""
    counts: dict[tuple[int, int], list[int]] = {}
    for _ in range(sessions):
        query = queries[int(rng.integers(len(queries)))]
        shown = list(rankings[query.text][:depth])
        k = int(rng.integers(1, depth))  # swap ranks k and k + 1 (from 1)
        swap = bool(rng.random() < 0.5)
        if swap:
            shown[k - 1], shown[k] = shown[k], shown[k - 1]
        clicks = clicked_ranks(shown, query.relevance, eta, rng)
        at = k + 1 if swap else k  # where the result originally at k was shown
        row = counts.setdefault((k, at), [0, 0])
        row[0] += at in clicks
        row[1] += 1
    return pd.DataFrame(
        [(k, at, c, n) for (k, at), (c, n) in counts.items()],
        columns=["rank", "shown_at", "clicks", "impressions"],
    )


def estimate_eta(rates: pd.DataFrame) -> float:
    """The position-bias exponent from swapped adjacent pairs: the same results' click rate at k + 1
    over their rate at k is p(k + 1) / p(k) = (k / (k + 1))**eta; chained from rank 1, a least-squares
    fit of log p(k) / p(1) = -eta log k."""
    rate = rates.assign(rate=rates["clicks"] / rates["impressions"]).pivot_table(
        index="rank", columns=rates["shown_at"] > rates["rank"], values="rate"
    )
    ratio = (rate[True] / rate[False]).replace([np.inf, 0], np.nan).dropna()
    ranks = np.arange(1, int(ratio.index.max()) + 2)
    log_steps = np.log(ratio.reindex(ranks[:-1]).to_numpy())
    relative = np.concatenate([[0.0], np.cumsum(log_steps)])  # log p(k) / p(1), k = 1..
    known = np.isfinite(relative)
    x = np.log(ranks[known])
    return float(-(x @ relative[known]) / (x @ x))
