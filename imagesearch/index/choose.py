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
    bytes_per_vector: float
    reason: str


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
) -> IndexChoice:
    """The cheapest index that fits the budgets; thresholds are parameters so they can be tested.
    `mergeable`: built in pieces and merged (a cluster build, or shards), which rules out HNSW."""
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
    subquantizers = fastscan_subquantizers(dim, budget - ID_BYTES_PER_VECTOR)
    if subquantizers is None:
        raise ValueError(f"a memory budget of {budget:.1f} B/vector cannot hold even a 2-byte PQ code + id")
    # 4-bit fast-scan PQ: SIMD table look-ups make the scan fast, and its 16-centroid sub-quantizers
    # train in seconds where 8-bit PQ (and OPQ, which trains one per iteration) takes minutes on 2 cores.
    code_bytes = subquantizers // 2
    return IndexChoice(
        IVF,
        f"IVF{nlist},PQ{subquantizers}x4fs",
        code_bytes + ID_BYTES_PER_VECTOR,
        f"memory-bound: {code_bytes}-byte 4-bit PQ codes, {nlist} lists, exact re-rank of a short list",
    )


def ivf_list_count(n: int) -> int:
    """~4*sqrt(n) lists (a power of two), and at least 39 training points per list as k-means wants."""
    target = 2 ** round(math.log2(max(16.0, 4 * math.sqrt(n))))
    return int(max(1, min(target, n // 39, 65536)))


def fastscan_subquantizers(dim: int, code_budget_bytes: float) -> int | None:
    """Most 4-bit sub-quantizers (an even divisor of `dim`) whose code fits the byte budget."""
    fitting = [m for m in range(4, dim + 1, 2) if dim % m == 0 and m / 2 <= code_budget_bytes]
    return max(fitting) if fitting else None
