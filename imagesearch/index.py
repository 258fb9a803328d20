"""FAISS indexes: choose a structure, build it, tune it for a target recall, save it atomically.

Choice is a pure function of (n vectors, dimension, memory budget, latency budget, GPU?) returning a
faiss factory string, as autofaiss does; tuning is separate from choosing. Search parameters are passed
per call (`faiss.SearchParameters*`), never set on the shared index, so concurrent searches cannot race.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from imagesearch.settings import IndexSettings

FLAT, HNSW, IVF = "flat", "hnsw", "ivf"
ID_BYTES_PER_VECTOR = 8  # IVF lists store a 64-bit id per vector
INDEX_FILE, IDS_FILE, VECTORS_FILE, MANIFEST_FILE = (
    "index.faiss",
    "ids.parquet",
    "vectors.npy",
    "manifest.json",
)


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
) -> IndexChoice:
    """The cheapest index that fits the budgets; thresholds are parameters so they can be tested."""
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
    if not gpu and hnsw_bytes <= budget:
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


# --- building and tuning ---------------------------------------------------------------------------
@dataclass(slots=True)
class TuneResult:
    params: dict[str, int]
    recall_at_10: float
    latency_ms: float
    reached_target: bool
    tried: list[dict] = field(default_factory=list)


def build_index(
    vectors: np.ndarray, choice: IndexChoice, *, train_sample: int = 100_000, seed: int = 0
) -> faiss.Index:
    """Train on a sample (when the structure needs training), then add every vector."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.index_factory(vectors.shape[1], choice.factory, faiss.METRIC_INNER_PRODUCT)
    on_gpu = gpu_available() and choice.kind == IVF
    working = faiss.index_cpu_to_all_gpus(index) if on_gpu else index
    if not working.is_trained:
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(len(vectors), min(train_sample, len(vectors)), replace=False)]
        working.train(sample)
    working.add(vectors)
    # Saved and served from the CPU copy: the file format and per-call search parameters are the CPU ones.
    return faiss.index_gpu_to_cpu(working) if on_gpu else working


def gpu_available() -> bool:
    """True only with the faiss-gpu build and a visible CUDA device (faiss-cpu lacks the function)."""
    return getattr(faiss, "get_num_gpus", lambda: 0)() > 0


def search_parameters(kind: str, params: dict[str, int]) -> faiss.SearchParameters | None:
    """Per-call search parameters for an index of this kind (None for exact search)."""
    if kind == HNSW:
        return faiss.SearchParametersHNSW(efSearch=params["efSearch"])
    if kind == IVF:
        ivf = faiss.SearchParametersIVF(nprobe=params["nprobe"])
        return faiss.SearchParametersPreTransform(index_params=ivf) if params.get("pretransform") else ivf
    return None


def candidate_settings(kind: str, index: faiss.Index) -> list[dict[str, int]]:
    if kind == HNSW:
        return [{"efSearch": ef} for ef in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)]
    if kind == IVF:
        nlist = faiss.extract_index_ivf(index).nlist
        pretransform = int(isinstance(index, faiss.IndexPreTransform))
        probes = [p for p in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512) if p <= nlist]
        return [{"nprobe": p, "pretransform": pretransform} for p in probes]
    return [{}]


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the true top-k found in the returned top-k (fewer than k when the set is small)."""
    fractions = []
    for returned, wanted in zip(found, truth, strict=True):
        wanted = {int(p) for p in wanted[:k] if p >= 0}
        fractions.append(len(wanted & {int(p) for p in returned[:k]}) / len(wanted) if wanted else 1.0)
    return float(np.mean(fractions))


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


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
    for params in candidate_settings(kind, index):
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
        tried.append({**params, "recall": recall_at(found, truth, k), "latency_ms": latency})
        if tried[-1]["recall"] >= target_recall:
            break
    best = next((t for t in tried if t["recall"] >= target_recall), max(tried, key=lambda t: t["recall"]))
    params = {key: value for key, value in best.items() if key not in ("recall", "latency_ms")}
    return TuneResult(params, best["recall"], best["latency_ms"], best["recall"] >= target_recall, tried)


def _without_self(positions: np.ndarray, query_positions: np.ndarray | None, k: int) -> np.ndarray:
    if query_positions is None:
        return positions[:, :k]
    return np.array(
        [[p for p in row if p != own][:k] for row, own in zip(positions, query_positions, strict=True)]
    )


def search(
    index: faiss.Index,
    kind: str,
    queries: np.ndarray,
    k: int,
    params: dict[str, int],
    *,
    vectors: np.ndarray | None = None,
    rerank_factor: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of the top-k; with `vectors`, the ANN short list is re-scored exactly."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    depth = min(index.ntotal, k * rerank_factor if vectors is not None else k)
    scores, positions = index.search(queries, depth, params=search_parameters(kind, params))
    if vectors is None:
        return scores, positions
    return rerank_exact(queries, positions, vectors, k)


def rerank_exact(queries: np.ndarray, positions: np.ndarray, vectors: np.ndarray, k: int):
    safe = np.where(positions < 0, 0, positions)
    exact = np.einsum("qd,qcd->qc", queries, vectors[safe].astype(np.float32))
    exact[positions < 0] = -np.inf
    order = np.argsort(-exact, axis=1)[:, :k]
    return np.take_along_axis(exact, order, axis=1), np.take_along_axis(positions, order, axis=1)


# --- persistence -----------------------------------------------------------------------------------
@dataclass(slots=True)
class IndexManifest:
    kind: str
    factory: str
    dim: int
    count: int
    params: dict[str, int]
    rerank_factor: int
    recall_at_10: float
    latency_ms: float
    bytes_per_vector: float
    model: str
    reason: str
    extra: dict = field(default_factory=dict)


@dataclass(slots=True)
class LoadedIndex:
    index: faiss.Index
    manifest: IndexManifest
    ids: pd.DataFrame
    vectors: np.ndarray  # float16 memmap: exact re-scoring without holding float32 copies in RAM

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rerank = self.vectors if self.manifest.rerank_factor > 1 else None
        return search(
            self.index,
            self.manifest.kind,
            queries,
            k,
            self.manifest.params,
            vectors=rerank,
            rerank_factor=self.manifest.rerank_factor,
        )


def save_index_atomic(
    folder: Path, index: faiss.Index, manifest: IndexManifest, ids: pd.DataFrame, vectors: np.ndarray
) -> Path:
    """Write into a temporary sibling, then swap it in: readers see the old index or the new one, whole."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    faiss.write_index(index, str(staging / INDEX_FILE))
    manifest.extra["index_file_bytes"] = (staging / INDEX_FILE).stat().st_size
    ids.to_parquet(staging / IDS_FILE, index=False)
    np.save(staging / VECTORS_FILE, vectors.astype(np.float16))
    (staging / MANIFEST_FILE).write_text(
        json.dumps(asdict(manifest), indent=2)
    )  # written last: marks complete
    _swap_in(staging, folder)
    return folder


def tune_with_rerank(
    index: faiss.Index, choice: IndexChoice, vectors: np.ndarray, config: IndexSettings
) -> tuple[int, TuneResult]:
    """(re-rank factor, tuning) with the lowest latency reaching the target, else the best recall."""
    rng = np.random.default_rng(0)
    query_positions = rng.choice(len(vectors), min(config.tune_queries, len(vectors)), replace=False)
    # PQ codes order candidates coarsely: a deeper exact re-rank can beat a wider probe, so try both.
    factors = [config.rerank_factor * m for m in (1, 4, 16)] if "PQ" in choice.factory else [1]
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


def build_tuned_index(
    vectors: np.ndarray,
    ids: pd.DataFrame,
    out: Path,
    *,
    model: str,
    config: IndexSettings,
    extra: dict | None = None,
) -> IndexManifest:
    """Choose, build and tune an index over `vectors` (row i is `ids` row i); save it atomically."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    budget = config.memory_budget_mb * 2**20 if config.memory_budget_mb else None
    choice = choose_index(
        len(vectors),
        vectors.shape[1],
        memory_budget_bytes=budget,
        latency_budget_ms=config.latency_budget_ms,
        gpu=gpu_available(),
        hnsw_m=config.hnsw_m,
    )
    started = time.perf_counter()
    index = build_index(vectors, choice, train_sample=config.train_sample)
    build_seconds = time.perf_counter() - started
    rerank, tuned = tune_with_rerank(index, choice, vectors, config)
    manifest = IndexManifest(
        kind=choice.kind,
        factory=choice.factory,
        dim=int(vectors.shape[1]),
        count=len(vectors),
        params=tuned.params,
        rerank_factor=rerank,
        recall_at_10=tuned.recall_at_10,
        latency_ms=tuned.latency_ms,
        bytes_per_vector=choice.bytes_per_vector,
        model=model,
        reason=choice.reason,
        extra={
            "reached_target": tuned.reached_target,
            "target_recall": config.target_recall,
            "build_seconds": round(build_seconds, 3),
            "rerank_vectors": "float16 memory map" if rerank > 1 else "none",
            "gpu_build": gpu_available() and choice.kind == IVF,
            **(extra or {}),
        },
    )
    save_index_atomic(out, index, manifest, ids, vectors)
    return manifest


def _swap_in(staging: Path, folder: Path) -> None:
    retired = folder.with_name(f".{folder.name}.retired-{os.getpid()}")
    if folder.exists():
        os.rename(folder, retired)
    os.rename(staging, folder)
    shutil.rmtree(retired, ignore_errors=True)


def index_fingerprint(folder: Path) -> str | None:
    """A digest of the folder's manifest (written last, swapped in whole): it changes with every build."""
    try:
        return hashlib.sha256((folder / MANIFEST_FILE).read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        return None


def load_index(folder: Path) -> LoadedIndex:
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no complete index in {folder} (manifest.json missing): build one first")
    manifest = IndexManifest(**json.loads(manifest_path.read_text()))
    index = faiss.read_index(str(folder / INDEX_FILE))
    ids = pd.read_parquet(folder / IDS_FILE)
    vectors = np.load(folder / VECTORS_FILE, mmap_mode="r")
    if index.ntotal != len(ids) or len(vectors) != len(ids):
        raise ValueError(f"index in {folder} is inconsistent: {index.ntotal} vectors, {len(ids)} ids")
    return LoadedIndex(index, manifest, ids, vectors)
