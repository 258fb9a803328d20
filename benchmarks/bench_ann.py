"""ANN benchmark: our chosen + tuned index vs exact search vs autofaiss's choice, same memory budget.

Datasets: the real embeddings of the default corpus (champion model; run `make demo` first) and
synthetic sets of 100k / 1M vectors drawn from a Gaussian mixture fitted to those real embeddings
(256 components in their top-64 principal subspace + their residual spread). Queries are 1,000
fresh draws from the same mixture (held out: not in the index); for the real set, 1,000 corpus
vectors left out of the index.

The memory budget is 1/8 of the float32 vectors for what every query scans (codes + ids), and 1/4
for ours' re-rank tier (inside the index, re-scoring its short list: 8-bit PQ codes of the residual,
or 8-bit scalar codes of the vectors when they are wider than 512 columns). For each index:
recall@10 against exact search, QPS for a batch of queries on 1 thread and on all threads, build time
(ours includes tuning), and bytes per vector of each tier.

    IMAGESEARCH_BENCH=1 bash scripts/setup.sh   # once: the autofaiss venv
    .venv/bin/python benchmarks/bench_ann.py [--sizes real,100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from imagesearch.catalog.build import read_catalog
from imagesearch.embeddings.store import model_key, read_model_embeddings
from imagesearch.index.build import build_tuned_index
from imagesearch.index.store import load_index
from imagesearch.models.registry import pin_reference
from imagesearch.settings import PROJECT_ROOT, IndexSettings, Settings

sys.path.insert(0, str(Path(__file__).parent))
from ann_measure import measure

AUTOFAISS_PYTHON = PROJECT_ROOT / ".tools" / "autofaiss" / "bin" / "python"
QUERIES = 1000


def real_embeddings(settings: Settings) -> np.ndarray:
    pinned = pin_reference(settings.embeddings.model, settings)
    catalog = read_catalog(settings.catalog_path)
    vectors, missing = read_model_embeddings(settings.embeddings_dir / model_key(pinned), catalog["id"])
    if len(missing) or not len(vectors):
        sys.exit("the corpus is not embedded yet: run `make demo` first")
    return vectors


def fitted_mixture(real: np.ndarray, rank: int = 64, components: int = 256, seed: int = 0):
    """A Gaussian mixture in the real vectors' top-`rank` principal subspace, plus their residual spread.

    Fitting in the principal subspace keeps the real data's low intrinsic dimension; a diagonal mixture
    over all 384 dimensions would not, and its neighbours would be close to random.
    """
    mean = real.mean(axis=0)
    _, singular, basis = np.linalg.svd(real - mean, full_matrices=False)
    basis = basis[:rank]
    projected = np.ascontiguousarray((real - mean) @ basis.T, dtype=np.float32)
    kmeans = faiss.Kmeans(rank, components, niter=25, seed=seed)
    kmeans.train(projected)
    assignment = kmeans.index.search(projected, 1)[1].ravel()
    weights = np.bincount(assignment, minlength=components) / len(real)
    spread = np.stack(
        [
            projected[assignment == c].std(axis=0) if (assignment == c).sum() > 1 else projected.std(axis=0)
            for c in range(components)
        ]
    )
    residual = np.sqrt((singular[rank:] ** 2).sum() / len(real) / real.shape[1])
    return mean, basis, kmeans.centroids, spread, weights, residual


def sample_mixture(mixture, n: int, seed: int) -> np.ndarray:
    mean, basis, centres, spread, weights, residual = mixture
    rng = np.random.default_rng(seed)
    out = np.empty((n, basis.shape[1]), np.float32)
    for start in range(0, n, 100_000):
        size = min(100_000, n - start)
        component = rng.choice(len(weights), size, p=weights)
        inner = centres[component] + rng.standard_normal((size, len(basis)), np.float32) * spread[component]
        chunk = inner @ basis + mean + residual * rng.standard_normal((size, basis.shape[1]), np.float32)
        out[start : start + size] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def exact_row(vectors: np.ndarray, queries: np.ndarray) -> tuple[dict, np.ndarray]:
    """The exact (Flat) row and the true top-10. The Flat index lives only here: its float32 copy
    of every vector (7.7 GB at 1M x 1,921) is freed before the other builds (`reset()` keeps it)."""
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    build = time.perf_counter() - start
    truth = flat.search(queries, 10)[1]
    row = {
        "factory": "Flat",
        "build_seconds": build,
        "bytes_per_vector": 4.0 * vectors.shape[1],
        **measure(lambda q, k: flat.search(q, k)[1], queries, truth),
    }
    return row, truth


def ours(vectors, queries, truth, budget_mb: float, rerank_mb: float | None, scratch: Path) -> dict:
    config = IndexSettings(memory_budget_mb=budget_mb, rerank_budget_mb=rerank_mb)
    ids = pd.DataFrame({"id": np.arange(len(vectors)).astype(str), "path": ""})
    start = time.perf_counter()
    manifest = build_tuned_index(vectors, ids, scratch / "ours", model="bench", config=config)
    build = time.perf_counter() - start
    loaded = load_index(scratch / "ours")

    def search(q, k):
        return loaded.search(q, k)[1]

    return {
        "factory": manifest.factory,
        "params": manifest.params | {"rerank": manifest.rerank_factor},
        "build_seconds": build,
        "bytes_per_vector": manifest.bytes_per_vector,
        "rerank_bytes_per_vector": manifest.extra["rerank_bytes_per_vector"],
        "rerank_tier": manifest.extra["rerank_vectors"],
        "index_file_bytes_per_vector": manifest.extra["index_file_bytes"] / len(vectors),
        "tuned_recall_leave_one_out": manifest.recall_at_10,
        **measure(search, queries, truth),
    }


def autofaiss(vectors, queries, truth, budget_mb: float, scratch: Path, timeout_s: float) -> dict | None:
    if not AUTOFAISS_PYTHON.exists():
        print("  (autofaiss peer skipped: run `IMAGESEARCH_BENCH=1 bash scripts/setup.sh`)")
        return None
    for name, array in (("vectors", vectors), ("queries", queries), ("truth", truth)):
        np.save(scratch / f"{name}.npy", array)
    peer = Path(__file__).with_name("autofaiss_peer.py")
    try:
        result = subprocess.run(
            [str(AUTOFAISS_PYTHON), str(peer), str(scratch), str(budget_mb)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        print(f"  autofaiss did not finish within {timeout_s:.0f} s: no peer row")
        return None
    if result.returncode != 0:
        print(f"  autofaiss failed:\n{result.stderr[-2000:]}")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(name: str, vectors: np.ndarray, queries: np.ndarray, with_peer: bool, peer_timeout_s: float) -> None:
    n, dim = vectors.shape
    budget_mb = n * dim * 4 / 8 / 2**20
    print(f"\n== {name}: {n:,} x {dim}, budget {budget_mb:.1f} MB (1/8 of float32), {len(queries)} queries")
    exact, truth = exact_row(vectors, queries)
    rows = {"exact (Flat)": exact}
    with tempfile.TemporaryDirectory() as scratch:
        rows["ours"] = ours(vectors, queries, truth, budget_mb, 2 * budget_mb, Path(scratch))
        peer = (
            autofaiss(vectors, queries, truth, budget_mb, Path(scratch), peer_timeout_s)
            if with_peer
            else None
        )
        if not with_peer:
            print(f"  (autofaiss skipped at {n:,} vectors: above --peer-max)")
        if peer:
            rows[f"autofaiss ({peer['faiss']})"] = peer
    report(rows, dim)


def report(rows: dict[str, dict], dim: int) -> None:
    peer = next((r for k, r in rows.items() if k.startswith("autofaiss")), None)
    header = f"{'index':22}{'factory':32}{'R@10':>6}{'QPS 1t':>9}{'QPS all':>9}{'build s':>9}{'RAM B':>7}"
    print(header + f"{'f32/B':>7}{'rerank B':>9}" + ("  QPS vs autofaiss (1t, all)" if peer else ""))
    for name, row in rows.items():
        rerank = row.get("rerank_bytes_per_vector", 0)
        line = (
            f"{name:22}{row['factory'][:31]:32}{row['recall_at_10']:6.3f}{row['qps_1_thread']:9.0f}"
            f"{row['qps_all_threads']:9.0f}{row['build_seconds']:9.1f}{row['bytes_per_vector']:7.0f}"
            f"{4 * dim / row['bytes_per_vector']:6.1f}x{rerank:9.0f}"
        )
        if peer:
            line += (
                f"  {row['qps_1_thread'] / peer['qps_1_thread']:.2f}x, "
                f"{row['qps_all_threads'] / peer['qps_all_threads']:.2f}x"
            )
        print(line)
    for name, row in rows.items():
        extras = {k: row[k] for k in ("params", "rerank_tier", "index_file_bytes_per_vector") if k in row}
        if extras:
            print(f"  {name}: {extras}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="real,100000,1000000")
    parser.add_argument("--peer-max", type=int, default=1_000_000, help="skip autofaiss above this size")
    parser.add_argument(
        "--peer-timeout", type=float, default=1800, help="seconds autofaiss may take per size (then: no row)"
    )
    args = parser.parse_args()
    real = real_embeddings(Settings())
    print(f"real embeddings of the default corpus: {real.shape}; faiss {faiss.__version__}")
    mixture = fitted_mixture(real)
    for size in args.sizes.split(","):
        if size == "real":
            rng = np.random.default_rng(0)
            held_out = rng.choice(len(real), QUERIES, replace=False)
            kept = np.setdiff1d(np.arange(len(real)), held_out)
            run(
                "real corpus embeddings",
                np.ascontiguousarray(real[kept]),
                real[held_out],
                True,
                args.peer_timeout,
            )
        else:
            n = int(size)
            vectors, queries = sample_mixture(mixture, n, seed=1), sample_mixture(mixture, QUERIES, seed=2)
            run(f"mixture {n:,}", vectors, queries, n <= args.peer_max, args.peer_timeout)


if __name__ == "__main__":
    main()
