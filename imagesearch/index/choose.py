"""Which FAISS structure to build: a pure function of (n vectors, dimension, memory budget, latency
budget, GPU?) returning a factory string, as autofaiss does. Thresholds are parameters so a table of
cases can test every decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FLAT, HNSW, IVF = "flat", "hnsw", "ivf"


ID_BYTES_PER_VECTOR = 8  # IVF lists store a 64-bit id per vector


@dataclass(frozen=True, slots=True)
class IndexChoice:
    kind: str
    factory: str
    bytes_per_vector: float  # the RAM tier every query scans: codes + ids (or full vectors)
    reason: str
    rerank_bytes_per_vector: float = 0.0  # the re-rank tier inside the index (IndexRefine), if any


def choose_index(
    n: int,
    dim: int,
    *,
    memory_budget_bytes: float | None = None,
    latency_budget_ms: float = 10.0,
    exact_flops_per_second: float = 5e9,
    hnsw_m: int = 32,
    gpu: bool = False,
    mergeable: bool = False,
    rerank_budget_bytes: float | None = None,
) -> IndexChoice:
    """The cheapest index that fits the budgets; thresholds are parameters so they can be tested.
    `mergeable`: built in pieces and merged (a cluster build, or shards), which rules out HNSW and
    the in-index re-rank tier. `rerank_budget_bytes`: for the memory-bound choice, the bytes of the
    re-rank tier (what re-scores the short list), None = unbounded (float16)."""
    if n <= 0 or dim <= 0:
        raise ValueError(f"cannot index {n} vectors of dimension {dim}")
    budget = math.inf if memory_budget_bytes is None else memory_budget_bytes / n
    flat_bytes = 4.0 * dim
    # Exact search costs ~2*n*dim flops per query: below the latency budget it is also the best index.
    exact_ms = 2.0 * n * dim / exact_flops_per_second * 1000
    if exact_ms <= latency_budget_ms and flat_bytes <= budget:
        return IndexChoice(
            FLAT, "Flat", flat_bytes, f"exact search ~{exact_ms:.1f} ms fits {latency_budget_ms} ms"
        )
    # HNSW: full vectors + 2*M int32 links on level 0; best recall/speed when it fits (CPU only in faiss).
    hnsw_bytes = flat_bytes + 2 * hnsw_m * 4
    if not gpu and not mergeable and hnsw_bytes <= budget:
        return IndexChoice(
            HNSW, f"HNSW{hnsw_m},Flat", hnsw_bytes, f"{hnsw_bytes:.0f} B/vector fits the budget"
        )
    nlist = ivf_list_count(n)
    if gpu and flat_bytes + ID_BYTES_PER_VECTOR <= budget:
        return IndexChoice(
            IVF, f"IVF{nlist},Flat", flat_bytes + ID_BYTES_PER_VECTOR, "GPU: IVF over full vectors"
        )
    rerank_budget = math.inf if rerank_budget_bytes is None else rerank_budget_bytes / n
    refine = None if mergeable else refine_tier(dim, rerank_budget)
    if refine is None:
        return _fastscan_choice(nlist, dim, budget)
    subquantizers = pq_subquantizers(dim, budget - ID_BYTES_PER_VECTOR)
    if subquantizers is None:
        raise ValueError(f"a memory budget of {budget:.1f} B/vector cannot hold even a 4-byte PQ code + id")
    factory, rerank_bytes = refine
    # 8-bit PQ codes order the short list far better than 4-bit ones at the same bytes (measured at 1M:
    # recall 0.89 vs 0.74 for 640 candidates), and the re-rank tier re-scores it inside faiss
    # (multi-threaded), so no full vector is read. Codebooks train on a sample (`train_sample`).
    return IndexChoice(
        IVF,
        f"IVF{nlist},PQ{subquantizers},Refine({factory})",
        subquantizers + ID_BYTES_PER_VECTOR,
        f"memory-bound: {subquantizers}-byte PQ codes, {nlist} lists, {factory} re-rank tier",
        rerank_bytes,
    )


def _fastscan_choice(nlist: int, dim: int, budget: float) -> IndexChoice:
    """IVF + 4-bit fast-scan PQ, re-ranked from the float16 vectors kept beside it (mergeable)."""
    subquantizers = fastscan_subquantizers(dim, budget - ID_BYTES_PER_VECTOR)
    if subquantizers is None:
        raise ValueError(f"a memory budget of {budget:.1f} B/vector cannot hold even a 2-byte PQ code + id")
    code_bytes = subquantizers // 2
    return IndexChoice(
        IVF,
        f"IVF{nlist},PQ{subquantizers}x4fs",
        code_bytes + ID_BYTES_PER_VECTOR,
        f"memory-bound: {code_bytes}-byte 4-bit PQ codes, {nlist} lists, exact re-rank of a short list",
    )


def refine_tier(dim: int, budget_bytes: float) -> tuple[str, float] | None:
    """The most precise re-rank tier that fits: float16 (2 B/dim) or 8-bit scalar codes (1 B/dim)."""
    for factory, bytes_per_dim in (("SQfp16", 2), ("SQ8", 1)):
        if bytes_per_dim * dim <= budget_bytes:
            return factory, float(bytes_per_dim * dim)
    return None


def pq_subquantizers(dim: int, code_budget_bytes: float) -> int | None:
    """Most 8-bit sub-quantizers (a divisor of `dim`, at least 2 dimensions each) within the budget."""
    fitting = [m for m in range(4, dim // 2 + 1) if dim % m == 0 and m <= code_budget_bytes]
    return max(fitting) if fitting else None


def ivf_list_count(n: int) -> int:
    """~4*sqrt(n) lists (a power of two), and at least 39 training points per list as k-means wants."""
    target = 2 ** round(math.log2(max(16.0, 4 * math.sqrt(n))))
    return int(max(1, min(target, n // 39, 65536)))


def fastscan_subquantizers(dim: int, code_budget_bytes: float) -> int | None:
    """Most 4-bit sub-quantizers (an even divisor of `dim`) whose code fits the byte budget."""
    fitting = [m for m in range(4, dim + 1, 2) if dim % m == 0 and m / 2 <= code_budget_bytes]
    return max(fitting) if fitting else None
