"""Tuning a built index: the cheapest search setting (and re-rank depth) that reaches a target recall.

Tuning is separate from choosing: the structure is fixed, only its search parameters move.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np

from imagesearch.index.choose import HNSW, IVF, IndexChoice
from imagesearch.index.search import exact_neighbours, recall_at, search
from imagesearch.settings import IndexSettings


# --- building and tuning ---------------------------------------------------------------------------
@dataclass(slots=True)
class TuneResult:
    params: dict[str, int]
    recall_at_10: float
    latency_ms: float
    reached_target: bool
    tried: list[dict] = field(default_factory=list)


# coarse short-list codes need deep lists: 1M x 1,921 with 113-byte codes stopped at recall 0.842 at k x 64
REFINE_K_FACTORS = (2, 4, 8, 16, 32, 64, 128, 256)
PLATEAU = 0.002  # a wider probe that lifts recall by less than this, twice in a row, ends the ladder


def candidate_settings(kind: str, index: faiss.Index) -> list[list[dict[str, int]]]:
    """Groups of settings, each group in rising cost: within a group the first that reaches the
    target is its cheapest. An in-index re-rank tier adds one group per short-list depth."""
    if kind == HNSW:
        return [[{"efSearch": ef} for ef in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)]]
    if kind == IVF:
        scalar_refined = isinstance(index, faiss.IndexRefine)
        nlist = faiss.extract_index_ivf(index).nlist
        coarse = faiss.downcast_index(index.base_index) if scalar_refined else index
        pretransform = int(isinstance(coarse, faiss.IndexPreTransform))
        probes = [p for p in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512) if p <= nlist]
        ladder = [{"nprobe": p, "pretransform": pretransform, "refine": int(scalar_refined)} for p in probes]
        if scalar_refined or isinstance(index, faiss.IndexIVFPQR):
            return [[{**step, "k_factor": factor} for step in ladder] for factor in REFINE_K_FACTORS]
        return [ladder]
    return [[{}]]


def tune(
    index: faiss.Index,
    kind: str,
    vectors: np.ndarray,
    queries: np.ndarray,
    *,
    target_recall: float = 0.95,
    k: int = 10,
    rerank_factor: int = 1,
    query_positions: np.ndarray | None = None,
) -> TuneResult:
    """Cheapest search setting reaching `target_recall`@k against exact search on `queries`.

    Queries drawn from the indexed vectors themselves pass their `query_positions`: each query's own
    entry is left out of both result lists (leave-one-out), so a trivial self-match cannot lift recall.
    When no setting reaches the target, the one with the best recall is kept and `reached_target` is False.
    """
    depth = k + (query_positions is not None)
    truth = _without_self(exact_neighbours(vectors, queries, depth), query_positions, k)
    tried = []
    for group in candidate_settings(kind, index):
        best_in_group, stalled = -1.0, 0  # stalled: steps in a row that gained nothing
        for params in group:
            start = time.perf_counter()
            found = search(
                index,
                kind,
                queries,
                depth,
                params,
                vectors=vectors if rerank_factor > 1 else None,
                rerank_factor=rerank_factor,
            )[1]
            latency = (time.perf_counter() - start) * 1000 / len(queries)
            found = _without_self(found, query_positions, k)
            recall = recall_at(found, truth, k)
            tried.append({**params, "recall": recall, "latency_ms": latency})
            stalled = 0 if recall > best_in_group + PLATEAU else stalled + 1
            best_in_group = max(best_in_group, recall)
            if recall >= target_recall or stalled == 2:  # reached, or the rest would not gain either
                break
    reaching = [t for t in tried if t["recall"] >= target_recall]
    best = min(reaching, key=lambda t: t["latency_ms"]) if reaching else max(tried, key=lambda t: t["recall"])
    params = {key: value for key, value in best.items() if key not in ("recall", "latency_ms")}
    return TuneResult(params, best["recall"], best["latency_ms"], best["recall"] >= target_recall, tried)


def recall_against_exact(
    search_positions: Callable[[np.ndarray, int], np.ndarray],
    vectors: np.ndarray,
    query_positions: np.ndarray,
    k: int = 10,
) -> float:
    """recall@k of a search against exact search, for queries that are indexed vectors themselves.

    Each query's own entry is left out of both lists (leave-one-out), so its trivial self-match can
    neither lift nor lower the figure: the one recall used by tuning and by the served-index check.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = vectors[query_positions]
    truth = _without_self(exact_neighbours(vectors, queries, k + 1), query_positions, k)
    found = _without_self(search_positions(queries, k + 1), query_positions, k)
    return recall_at(found, truth, k)


def _without_self(positions: np.ndarray, query_positions: np.ndarray | None, k: int) -> np.ndarray:
    if query_positions is None:
        return positions[:, :k]
    return np.array(
        [[p for p in row if p != own][:k] for row, own in zip(positions, query_positions, strict=True)]
    )


def tune_with_rerank(
    index: faiss.Index, choice: IndexChoice, vectors: np.ndarray, config: IndexSettings
) -> tuple[int, TuneResult]:
    """(re-rank factor, tuning) with the lowest latency reaching the target, else the best recall."""
    rng = np.random.default_rng(0)
    query_positions = rng.choice(len(vectors), min(config.tune_queries, len(vectors)), replace=False)
    # PQ codes order candidates coarsely: a deeper exact re-rank can beat a wider probe, so try both.
    external = "PQ" in choice.factory and not choice.rerank_bytes_per_vector  # else re-ranked in faiss
    factors = [config.rerank_factor * m for m in (1, 4, 16)] if external else [1]
    trials = {
        factor: tune(
            index,
            choice.kind,
            vectors,
            vectors[query_positions],
            target_recall=config.target_recall,
            rerank_factor=factor,
            query_positions=query_positions,
        )
        for factor in factors
    }
    reaching = {f: t for f, t in trials.items() if t.reached_target}
    rerank = (
        min(reaching, key=lambda f: reaching[f].latency_ms)
        if reaching
        else max(trials, key=lambda f: trials[f].recall_at_10)
    )
    return rerank, trials[rerank]
