"""Measurements shared by bench_ann.py and the autofaiss peer (numpy + faiss only: runs in both venvs)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import faiss
import numpy as np

Search = Callable[[np.ndarray, int], np.ndarray]  # (queries, k) -> positions


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth, strict=True)]))


def queries_per_second(search: Search, queries: np.ndarray, threads: int, repeats: int = 3) -> float:
    """Best of `repeats` batch searches of all queries with faiss limited to `threads` threads."""
    faiss.omp_set_num_threads(threads)
    search(queries[:10], 10)  # warm-up (page in, allocate)
    best = min(_timed(search, queries) for _ in range(repeats))
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return len(queries) / best


def _timed(search: Search, queries: np.ndarray) -> float:
    start = time.perf_counter()
    search(queries, 10)
    return time.perf_counter() - start


def measure(search: Search, queries: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {
        "recall_at_10": recall_at_10(search(queries, 10), truth),
        "qps_1_thread": queries_per_second(search, queries, 1),
        "qps_all_threads": queries_per_second(search, queries, os.cpu_count() or 1),
    }
