"""Searching a FAISS index: per-call search parameters, the exact re-score of a short list, recall.

Search parameters are passed per call (`faiss.SearchParameters*`), never set on the shared index, so
concurrent searches cannot race.
"""

from __future__ import annotations

import faiss
import numpy as np

from imagesearch.index.choose import HNSW, IVF


def gpu_available() -> bool:
    """True only with the faiss-gpu build and a visible CUDA device (faiss-cpu lacks the function)."""
    return index_gpu_count() > 0


# a filter keeping at most this many rows is searched exactly over them (~10 ms at 384-d)
EXACT_SUBSET_ROWS = 20_000


def search_parameters(
    kind: str, params: dict[str, int], selector: faiss.IDSelector | None = None
) -> faiss.SearchParameters | None:
    """Per-call search parameters for an index of this kind (None for exact search without a filter);
    `selector` restricts the search to the rows it selects, inside faiss. `refine` (an IndexRefine's
    scalar re-rank tier) re-scores a short list of k x `k_factor` from the IVF's answer."""
    if kind == HNSW:
        return faiss.SearchParametersHNSW(efSearch=params["efSearch"], sel=selector)
    if kind == IVF:
        ivf = faiss.SearchParametersIVF(nprobe=params["nprobe"], sel=selector)
        if params.get("pretransform"):
            ivf = faiss.SearchParametersPreTransform(index_params=ivf)
        if params.get("refine"):
            return faiss.IndexRefineSearchParameters(k_factor=params["k_factor"], base_index_params=ivf)
        return ivf
    return faiss.SearchParameters(sel=selector) if selector is not None else None


def takes_selector(index: faiss.Index) -> bool:
    """IndexIVFPQR re-ranks through stored pairs, which faiss refuses to combine with a selector."""
    return not isinstance(index, faiss.IndexIVFPQR)


def widen_for_filter(kind: str, params: dict[str, int], kept_fraction: float) -> dict[str, int]:
    """Search parameters for a filtered search: HNSW's walk skips the rows a filter drops, so its
    candidate list is widened by the inverse of the fraction kept (measured: 17% kept, recall
    0.84 -> the unfiltered 0.98); IVF lists hold the nearest kept rows anyway."""
    if kind != HNSW:
        return params
    return {**params, "efSearch": int(min(params["efSearch"] / max(kept_fraction, 1e-3), 4096))}


def id_selector(allowed: np.ndarray) -> faiss.IDSelector:
    """A faiss selector of the rows where `allowed` is True (a bitmap: one bit per row)."""
    bits = np.packbits(allowed, bitorder="little")
    selector = faiss.IDSelectorBitmap(bits)
    selector.bits_owner = bits  # faiss reads the numpy buffer: it must live as long as the selector
    return selector


def exact_subset(
    queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray, k: int, chunk: int = 32_768
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among `rows` of `vectors` (float16 or float32), a chunk of rows at a time."""
    best = (np.full((len(queries), 0), -np.inf, np.float32), np.full((len(queries), 0), -1, np.int64))
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        scores = queries @ np.asarray(vectors[part], dtype=np.float32).T
        best = merge_top_k([best, (scores, np.broadcast_to(part, scores.shape))], k)
    return merge_top_k([best], k)


def merge_top_k(lists: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of several (scores, positions) result lists per query, padded with -1 / -inf."""
    scores = np.concatenate([s for s, _ in lists], axis=1).astype(np.float32)
    positions = np.concatenate([p for _, p in lists], axis=1).astype(np.int64)
    scores = np.where(positions < 0, -np.inf, scores)
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        positions = np.pad(positions, ((0, 0), (0, pad)), constant_values=-1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(positions, order, axis=1)


def keep_allowed(
    scores: np.ndarray, positions: np.ndarray, allowed: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best k results of each query whose rows `allowed` keeps."""
    kept = (positions >= 0) & allowed[np.where(positions < 0, 0, positions)]
    return merge_top_k([(scores, np.where(kept, positions, -1))], k)


def set_refine_depth(index: faiss.Index, params: dict[str, int]) -> None:
    """The short list (k x `k_factor`) the residual re-rank tier of an IndexIVFPQR re-scores. faiss
    reads it only from the index, not from search parameters; every search of a served index passes
    its manifest's one value, and tuning (which varies it) runs before the index is published."""
    if "k_factor" in params and isinstance(index, faiss.IndexIVFPQR):
        index.k_factor = float(params["k_factor"])


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the true top-k found in the returned top-k (fewer than k when the set is small)."""
    fractions = []
    for returned, wanted in zip(found, truth, strict=True):
        wanted = {int(p) for p in wanted[:k] if p >= 0}
        fractions.append(len(wanted & {int(p) for p in returned[:k]}) / len(wanted) if wanted else 1.0)
    return float(np.mean(fractions))


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Positions of each query's exact top-k by inner product, without copying `vectors` into an
    index (at 1M x 1,921 that copy alone is 7.7 GB)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def search(
    index: faiss.Index,
    kind: str,
    queries: np.ndarray,
    k: int,
    params: dict[str, int],
    *,
    vectors: np.ndarray | None = None,
    rerank_factor: int = 1,
    selector: faiss.IDSelector | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of the top-k (among the rows `selector` selects); with `vectors`, the ANN
    short list is re-scored exactly."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    depth = min(index.ntotal, k * rerank_factor if vectors is not None else k)
    set_refine_depth(index, params)
    parameters = search_parameters(kind, params, selector)
    scores, positions = index.search(queries, depth, params=parameters)
    if index.metric_type == faiss.METRIC_L2:  # unit vectors: |q - x|^2 = 2 - 2 q.x
        scores = 1.0 - scores / 2.0
    if vectors is None:
        return scores, positions
    return rerank_exact(queries, positions, vectors, k)


def rerank_exact(queries: np.ndarray, positions: np.ndarray, vectors: np.ndarray, k: int):
    """Exact scores of each query's short list, one query at a time: the gathered candidates of a
    whole batch of deep queries would not fit in memory."""
    safe = np.where(positions < 0, 0, positions)
    exact = (
        np.stack([vectors[row].astype(np.float32) @ query for query, row in zip(queries, safe, strict=True)])
        if len(queries)
        else np.zeros(positions.shape, np.float32)
    )
    exact[positions < 0] = -np.inf
    order = np.argsort(-exact, axis=1)[:, :k]
    return np.take_along_axis(exact, order, axis=1), np.take_along_axis(positions, order, axis=1)


def limit_search_threads(threads: int) -> None:
    """FAISS's OpenMP threads for searches made from the calling thread."""
    faiss.omp_set_num_threads(threads)


def index_gpu_count() -> int:
    """CUDA devices faiss can use: 0 with the faiss-cpu build (which lacks the function)."""
    return getattr(faiss, "get_num_gpus", lambda: 0)()
