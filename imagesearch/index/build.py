"""FAISS indexes: choose a structure, build it, tune it for a target recall, save it atomically.

Choice is a pure function of (n vectors, dimension, memory budget, latency budget, GPU?) returning a
faiss factory string, as autofaiss does; tuning is separate from choosing. Search parameters are passed
per call (`faiss.SearchParameters*`), never set on the shared index, so concurrent searches cannot race."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from imagesearch.common.executor import Executor
from imagesearch.index.choose import L2, SCALAR_RERANK, IndexChoice, choose_index
from imagesearch.index.pieces import MERGEABLE_KINDS, group_into_shards, merge_pieces
from imagesearch.index.search import gpu_available
from imagesearch.index.store import IndexManifest, save_index_atomic
from imagesearch.index.tune import tune_with_rerank
from imagesearch.settings import IndexSettings


def builds_on_gpu(choice: IndexChoice) -> bool:
    """IVF over full vectors or plain 8-bit PQ codes: what faiss-gpu can train and fill (it has no
    fast-scan or residual-refine IVF)."""
    return gpu_available() and re.fullmatch(r"IVF\d+,(Flat|PQ\d+)", choice.factory) is not None


def train_empty(
    vectors: np.ndarray, choice: IndexChoice, *, train_sample: int = 100_000, seed: int = 0
) -> faiss.Index:
    """The chosen structure, trained on a sample when it needs training (on GPU when there is one), empty."""
    metric = faiss.METRIC_L2 if choice.metric == L2 else faiss.METRIC_INNER_PRODUCT
    index = faiss.index_factory(vectors.shape[1], choice.factory, metric)
    if index.is_trained:
        return index
    on_gpu = builds_on_gpu(choice)
    working = faiss.index_cpu_to_all_gpus(index) if on_gpu else index
    rng = np.random.default_rng(seed)
    working.train(vectors[rng.choice(len(vectors), min(train_sample, len(vectors)), replace=False)])
    # Saved and served from the CPU copy: the file format and per-call search parameters are the CPU ones.
    return faiss.index_gpu_to_cpu(working) if on_gpu else working


def build_index(
    vectors: np.ndarray, choice: IndexChoice, *, train_sample: int = 100_000, seed: int = 0
) -> faiss.Index:
    """Train on a sample (when the structure needs training), then add every vector."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = train_empty(vectors, choice, train_sample=train_sample, seed=seed)
    if builds_on_gpu(choice):
        gpu_index = faiss.index_cpu_to_all_gpus(index)
        gpu_index.add(vectors)
        return faiss.index_gpu_to_cpu(gpu_index)
    index.add(vectors)
    return index


def build_in_pieces(
    vectors: np.ndarray,
    choice: IndexChoice,
    bounds: list[int],
    executor: Executor,
    *,
    shards: int = 1,
    train_sample: int = 100_000,
) -> tuple[faiss.Index, list[tuple[faiss.Index, int]]]:
    """Train once, fill one piece per row range [bounds[i], bounds[i+1]) with `executor`, merge: the
    whole index, and (when `shards` > 1) the shards as (index, first row)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    trained = train_empty(vectors, choice, train_sample=train_sample)
    pieces = executor.fill_pieces(trained, vectors, bounds)
    merged = merge_pieces(pieces, bounds[:-1])
    return merged, (group_into_shards(pieces, bounds, shards) if shards > 1 else [])


def rerank_tier_name(choice: IndexChoice, rerank_factor: int) -> str:
    if choice.factory.endswith(SCALAR_RERANK):
        return f"{choice.rerank_bytes_per_vector:.0f}-byte scalar codes of the vectors in the index (RAM)"
    if choice.rerank_bytes_per_vector:
        return f"{choice.rerank_bytes_per_vector:.0f}-byte residual PQ codes in the index (RAM)"
    return "float16 memory map" if rerank_factor > 1 else "none"


def build_tuned_index(
    vectors: np.ndarray,
    ids: pd.DataFrame,
    out: Path,
    *,
    model: str,
    config: IndexSettings,
    extra: dict | None = None,
    check: Callable[[Path], None] | None = None,
    executor: Executor | None = None,
    bounds: list[int] | None = None,
    shards: int = 1,
) -> IndexManifest:
    """Choose, build and tune an index over `vectors` (row i is `ids` row i); save it atomically.
    `check(staging_folder)` may refuse the complete new index (by raising) before it is published.
    With an `executor`, the index is built in pieces (row ranges `bounds`, default one) and merged;
    `shards` > 1 also keeps it as that many shard files for sharded serving."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    budget = config.memory_budget_mb * 2**20 if config.memory_budget_mb else None
    rerank_budget = config.rerank_budget_mb * 2**20 if config.rerank_budget_mb else None
    choice = choose_index(
        len(vectors),
        vectors.shape[1],
        memory_budget_bytes=budget,
        latency_budget_ms=config.latency_budget_ms,
        gpu=gpu_available(),
        hnsw_m=config.hnsw_m,
        rerank_budget_bytes=rerank_budget,
        max_residual_subquantizers=config.max_residual_subquantizers,
        mergeable=shards > 1 or (executor is not None and executor.name != "in_process"),
    )
    started = time.perf_counter()
    shard_indexes: list[tuple[faiss.Index, int]] = []
    executor_name, piece_count = "in_process", 1
    if executor is not None and choice.kind in MERGEABLE_KINDS:
        bounds = bounds or [0, len(vectors)]
        executor_name, piece_count = executor.name, len(bounds) - 1
        index, shard_indexes = build_in_pieces(
            vectors, choice, bounds, executor, shards=shards, train_sample=config.train_sample
        )
    else:
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
            "rerank_vectors": rerank_tier_name(choice, rerank),
            "rerank_bytes_per_vector": choice.rerank_bytes_per_vector
            or (2.0 * vectors.shape[1] if rerank > 1 else 0),
            "gpu_build": builds_on_gpu(choice),
            "executor": executor_name,
            "pieces": piece_count,
            **(extra or {}),
        },
    )
    save_index_atomic(out, index, manifest, ids, vectors, check=check, shards=shard_indexes)
    return manifest
