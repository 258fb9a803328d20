"""The heavy stages in process vs on a 1-node and a 2-node local Ray cluster, same data, one run.

backfill:  N catalog images (default corpus) embedded by v0 into fresh parquet shards.
index:     M synthetic unit vectors, IVF + 4-bit fast-scan PQ (what `choose_index` picks under a
           memory budget): train once on a sample, 16 pieces filled, merged.
shard:     one shard's search latency at batch 1 (its p50/p99 and queries/s per core), and the p99 of
           the slowest of S shards in a fan-out, simulated by drawing S measured latencies per query.

Every Ray row includes the cluster's own overhead except start-up, which is reported on its own.
All nodes of a local cluster share this machine's cores (each node announces all of them as logical
CPUs, one image-tower actor per node): 1 -> 2 nodes shows the engine's overhead and scheduling, not
added hardware.

    .venv/bin/python benchmarks/bench_ray.py [--images 256] [--vectors 200000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import imagesearch.cluster as cluster
from imagesearch.catalog.build import read_catalog
from imagesearch.common.executor import InProcess
from imagesearch.common.images import DEFAULT_LIMITS
from imagesearch.embeddings.backfill import backfill
from imagesearch.index.build import build_in_pieces, build_index
from imagesearch.index.choose import IndexChoice, choose_index
from imagesearch.index.pieces import search_shard
from imagesearch.models.registry import load_encoder
from imagesearch.settings import ClusterSettings, Settings

CORES = os.cpu_count() or 1


def backfill_seconds(encoder, catalog, executor) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as folder:
        report = backfill(
            encoder,
            catalog,
            Path(folder),
            batch_size=32,
            executor=executor,
            limits=DEFAULT_LIMITS,
            progress=False,
        )
    assert report.embedded == len(catalog), report.failed
    return report.seconds, report.workers


def index_seconds(vectors, choice, bounds, executor) -> float:
    started = time.perf_counter()
    if executor is None:
        build_index(vectors, choice, train_sample=50_000)
    else:
        build_in_pieces(vectors, choice, bounds, executor, train_sample=50_000)
    return time.perf_counter() - started


def synthetic(count: int, dim: int = 256) -> np.ndarray:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((64, dim)).astype(np.float32)
    vectors = centers[rng.integers(0, 64, count)] + 0.6 * rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def shard_latencies(vectors, choice, nprobe: int, queries: int = 400) -> np.ndarray:
    import faiss

    faiss.omp_set_num_threads(1)  # one core per shard searcher
    index = build_index(vectors, choice, train_sample=50_000)
    found = np.empty(queries)
    for q in range(queries):
        started = time.perf_counter()
        search_shard(index, 0, choice.kind, {"nprobe": nprobe}, vectors[q : q + 1] + 0.01, 40)
        found[q] = (time.perf_counter() - started) * 1000
    faiss.omp_set_num_threads(CORES)
    return found


def fanout_p99(latencies: np.ndarray, shards: int, draws: int = 20_000) -> float:
    rng = np.random.default_rng(1)
    return float(np.percentile(rng.choice(latencies, (draws, shards)).max(axis=1), 99))


def on_cluster(nodes: int, cpus: int, run):
    started = time.perf_counter()
    with cluster.local_cluster(nodes=nodes, cpus_per_node=cpus, object_store_mb=400):
        startup = time.perf_counter() - started
        return startup, run(cluster.RayExecutor(ClusterSettings(engine="ray", embed_actors=nodes)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    settings = Settings()
    catalog = read_catalog(settings.catalog_path).sample(args.images, random_state=0)
    catalog = catalog.assign(id=catalog["id"]).sort_values("id", ignore_index=True)
    encoder = load_encoder("v0", settings)
    vectors = synthetic(args.vectors)
    choice = choose_index(
        len(vectors), vectors.shape[1], memory_budget_bytes=40.0 * len(vectors), mergeable=True
    )
    bounds = [round(i * len(vectors) / 16) for i in range(17)]

    rows = []
    seconds, _ = backfill_seconds(encoder, catalog, InProcess())
    rows.append({"stage": "backfill", "where": "in process", "startup_s": 0.0, "seconds": seconds})
    rows.append({"stage": "index", "where": "in process", "startup_s": 0.0,
                 "seconds": index_seconds(vectors, choice, bounds, None)})  # fmt: skip
    for nodes in (1, 2):
        cpus = CORES  # logical CPUs per node: both nodes share this machine's cores

        def run(executor):
            backfill_s, workers = backfill_seconds(encoder, catalog, executor)
            return (
                backfill_s,
                workers,
                index_seconds(vectors, choice, bounds, executor),
                executor.piece_workers,
            )

        startup, (backfill_s, workers, index_s, piece_workers) = on_cluster(nodes, cpus, run)
        where = f"ray, {nodes} node{'s' * (nodes > 1)} x {cpus} CPU"
        node_count = len({w.split(":")[0] for w in workers})
        rows.append({"stage": "backfill", "where": where, "startup_s": startup, "seconds": backfill_s,
                     "nodes_used": node_count})  # fmt: skip
        rows.append({"stage": "index", "where": where, "startup_s": startup, "seconds": index_s,
                     "nodes_used": len({w.split(":")[0] for w in piece_workers})})  # fmt: skip

    base = {row["stage"]: row["seconds"] for row in rows if row["where"] == "in process"}
    print(
        f"{args.images} images, {args.vectors} x 256-d vectors ({choice.factory}, 16 pieces), {CORES} cores\n"
    )
    print("| stage | where | cluster start-up s | seconds | rate | vs in process | nodes used |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        count = args.images if row["stage"] == "backfill" else args.vectors
        unit = "img/s" if row["stage"] == "backfill" else "vectors/s"
        print(
            f"| {row['stage']} | {row['where']} | {row['startup_s']:.1f} | {row['seconds']:.2f} | "
            f"{count / row['seconds']:,.0f} {unit} | {base[row['stage']] / row['seconds']:.2f}x | "
            f"{row.get('nodes_used', 1)} |"
        )

    # Short lists (what choose_index picks here) and long ones (~len/16 codes per list, as a shard of
    # billions with 2^16 lists has): codes scanned per second per core is what scales to production.
    long_lists = IndexChoice("ivf", "IVF16,PQ32x4fs", choice.bytes_per_vector, "long lists")
    shards = [shard_row(vectors, choice, 16), shard_row(vectors, long_lists, 2)]
    print("\n| shard (1 thread, k 40) | codes scanned/query | p50 ms | p99 ms | queries/s/core | "
          "codes/s/core | fan-out p99 S=10 / 100 / 1000 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for row in shards:
        fan = " / ".join(f"{row['fanout_p99_ms'][s]:.2f}" for s in (10, 100, 1000))
        cells = [
            f"{row['factory']}, nprobe {row['nprobe']}",
            f"{row['codes_per_query']:,.0f}",
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            f"{row['qps_per_core']:,.0f}",
            f"{row['codes_per_second']:,.0f}",
            fan,
        ]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "shards": shards, "cores": CORES}, indent=2))


def shard_row(vectors: np.ndarray, choice: IndexChoice, nprobe: int) -> dict:
    latencies = shard_latencies(vectors, choice, nprobe)
    p50, p99 = np.percentile(latencies, [50, 99])
    lists = int(choice.factory.split(",")[0].removeprefix("IVF"))
    codes = len(vectors) / lists * nprobe
    return {
        "factory": choice.factory,
        "nprobe": nprobe,
        "codes_per_query": codes,
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "qps_per_core": float(1000 / latencies.mean()),
        "codes_per_second": float(codes * 1000 / latencies.mean()),
        "fanout_p99_ms": {s: fanout_p99(latencies, s) for s in (1, 10, 100, 1000)},
    }


if __name__ == "__main__":
    main()
