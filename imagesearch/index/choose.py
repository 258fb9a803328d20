"""Which FAISS structure to build: a pure function of (n vectors, dimension, memory budget, latency
budget, GPU?) returning a factory string, as autofaiss does. Thresholds are parameters so a table of
cases can test every decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FLAT, HNSW, IVF = "flat", "hnsw", "ivf"
IP, L2 = "ip", "l2"


ID_BYTES_PER_VECTOR = 8  # IVF lists store a 64-bit id per vector
# Each residual sub-quantizer is a k-means of its own over the training sample, and encoding runs one
# 256-way search per sub-quantizer per vector: past this many the re-rank tier's build is unbounded in
# practice (1M x 1,921 one-dimension sub-quantizers did not finish in 45 min); wider vectors get 8-bit
# scalar codes, which train in milliseconds.
MAX_RESIDUAL_SUBQUANTIZERS = 512
SCALAR_RERANK = "Refine(SQ8)"
PAD_MULTIPLE = 16


@dataclass(frozen=True, slots=True)
class IndexChoice:
    kind: str
    factory: str
    bytes_per_vector: float  # the RAM tier every query scans: codes + ids (or full vectors)
    reason: str
    rerank_bytes_per_vector: float = 0.0  # the re-rank tier inside the index, if any
    metric: str = IP  # L2 only where faiss has no inner product (equal ranking on unit vectors)


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
    max_residual_subquantizers: int = MAX_RESIDUAL_SUBQUANTIZERS,
) -> IndexChoice:
    """The cheapest index that fits the budgets; thresholds are parameters so they can be tested.
    `mergeable`: built in pieces and merged (a cluster build, or shards), which rules out HNSW and
    the in-index re-rank tier. `rerank_budget_bytes`: for the memory-bound choice, the bytes of the
    re-rank tier (what re-scores the short list), None = unbounded (float16). Vectors wider than
    `max_residual_subquantizers` are re-ranked from 8-bit scalar codes instead of a residual PQ."""
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
    wide = dim > max_residual_subquantizers
    if wide and not mergeable and dim <= rerank_budget:
        scalar = _scalar_rerank_choice(nlist, dim, budget)
        if scalar is not None:
            return scalar
    residual = None if mergeable or wide else residual_subquantizers(dim, rerank_budget)
    if residual is None:
        return _fastscan_choice(nlist, dim, budget)
    # ids in the lists, and the id -> entry map that decodes the service's candidates
    overhead = 2 * ID_BYTES_PER_VECTOR
    subquantizers = pq_subquantizers(dim, budget - overhead)
    if subquantizers is None:  # too tight for 8-bit codes and two ids: 4-bit codes may still fit
        return _fastscan_choice(nlist, dim, budget)
    # 8-bit PQ codes order the short list far better than 4-bit ones of the same size, and a second
    # 8-bit PQ of what the first left over (IndexIVFPQR) re-scores it inside faiss: at 1M x 384 it
    # reached recall 0.97 with 384 bytes, where 8-bit scalar codes of the vectors themselves (same
    # bytes) stop at 0.915 and float16 ones (twice the bytes) at 0.95. Its metric is L2, which ranks
    # unit vectors exactly as the inner product does. Codebooks train on a sample (`train_sample`).
    return IndexChoice(
        IVF,
        f"IVF{nlist},PQ{subquantizers}+{residual}",
        subquantizers + overhead,
        f"memory-bound: {subquantizers}-byte PQ codes, {nlist} lists, {residual}-byte residual re-rank tier",
        float(residual),
        metric=L2,
    )


def _scalar_rerank_choice(nlist: int, dim: int, budget: float) -> IndexChoice | None:
    """IVF + 8-bit PQ codes for the short list, re-scored from 8-bit scalar codes of the vectors
    (one byte per dimension) inside faiss (IndexRefine); None when the PQ codes do not fit.
    The codes see the vectors zero-padded to a multiple of 16 columns: a width such as 1,921
    (17 x 113) otherwise allows only 113 sub-quantizers of 17 columns, whose short lists measured
    recall@10 0.842 at 1M where the budget holds four times the code."""
    padded = -(-dim // PAD_MULTIPLE) * PAD_MULTIPLE
    # the scalar codes are read by row number, so the lists' ids are the only overhead
    subquantizers = pq_subquantizers(padded, budget - ID_BYTES_PER_VECTOR)
    if subquantizers is None:
        return None
    pad = f"Pad{padded}," if padded != dim else ""
    return IndexChoice(
        IVF,
        f"{pad}IVF{nlist},PQ{subquantizers},{SCALAR_RERANK}",
        subquantizers + ID_BYTES_PER_VECTOR,
        f"memory-bound, wide vectors: {subquantizers}-byte PQ codes, {nlist} lists, "
        f"{dim}-byte scalar re-rank tier",
        float(dim),
    )


def _fastscan_choice(nlist: int, dim: int, budget: float) -> IndexChoice:
    """IVF + 4-bit fast-scan PQ, re-ranked from the float16 vectors kept beside it (mergeable)."""
    subquantizers = fastscan_subquantizers(dim, budget - ID_BYTES_PER_VECTOR)
    if subquantizers is None and dim % 2:  # an odd width has no fast-scan layout
        return _eight_bit_choice(nlist, dim, budget)
    if subquantizers is None:
        raise ValueError(f"a memory budget of {budget:.1f} B/vector cannot hold even a 2-byte PQ code + id")
    code_bytes = subquantizers // 2
    return IndexChoice(
        IVF,
        f"IVF{nlist},PQ{subquantizers}x4fs",
        code_bytes + ID_BYTES_PER_VECTOR,
        f"memory-bound: {code_bytes}-byte 4-bit PQ codes, {nlist} lists, exact re-rank of a short list",
    )


def _eight_bit_choice(nlist: int, dim: int, budget: float) -> IndexChoice:
    """IVF + plain 8-bit PQ, re-ranked from the float16 vectors kept beside it (mergeable)."""
    subquantizers = pq_subquantizers(dim, budget - ID_BYTES_PER_VECTOR)
    if subquantizers is None:
        raise ValueError(f"a memory budget of {budget:.1f} B/vector cannot hold an 8-bit PQ code + id")
    return IndexChoice(
        IVF,
        f"IVF{nlist},PQ{subquantizers}",
        subquantizers + ID_BYTES_PER_VECTOR,
        f"memory-bound: {subquantizers}-byte PQ codes ({dim} columns: no 4-bit fast-scan layout), "
        f"{nlist} lists, exact re-rank of a short list",
    )


def residual_subquantizers(dim: int, budget_bytes: float) -> int | None:
    """The re-rank tier: most 8-bit sub-quantizers of the residual (a divisor of `dim`, at most one per
    dimension) within its byte budget; None when not even a quarter-dimension code fits."""
    fitting = [m for m in range(dim // 4, dim + 1) if dim % m == 0 and m <= budget_bytes]
    return max(fitting) if fitting else None


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
