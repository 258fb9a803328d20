"""Backfill throughput vs the raw model forward on the same machine, measured in the same run.

raw forward: the image model on already-preprocessed tensors (batch 32) — the ceiling.
backfill:    our reader -> mapper -> writer (DataLoader workers decode + preprocess while the main
             process runs the forward), from files on disk to parquet shards.
serial:      the same backfill with decoding in the main process (workers=0), for reference.

Images come from the default corpus catalog (run `make demo` or `imagesearch catalog build` first).

    .venv/bin/python benchmarks/bench_backfill.py [--images 512] [--model v0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from imagesearch.catalog.build import read_catalog
from imagesearch.common.executor import InProcess
from imagesearch.common.images import DEFAULT_LIMITS
from imagesearch.embeddings.backfill import backfill
from imagesearch.embeddings.reader import default_workers
from imagesearch.models.registry import load_encoder
from imagesearch.settings import Settings


def raw_forward_rate(encoder, paths: list[str], batch_size: int) -> float:
    pixels = encoder.preprocess(paths[: batch_size * 4])
    batches = list(torch.split(pixels, batch_size))
    encoder.encode_pixels(batches[0])  # warm-up
    start = time.perf_counter()
    repeats = max(1, len(paths) // len(pixels))
    for _ in range(repeats):
        for batch in batches:
            encoder.encode_pixels(batch)
    return repeats * len(pixels) / (time.perf_counter() - start)


def backfill_rate(encoder, catalog, workers: int, batch_size: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        report = backfill(
            encoder,
            catalog,
            Path(folder) / "embeddings",
            batch_size=batch_size,
            executor=InProcess(workers),
            limits=DEFAULT_LIMITS,
            progress=False,
        )
    assert report.embedded == len(catalog), report.failed
    return report.embedded / report.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--model", default="v0", help="any model reference; v0 needs no registry")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    settings = Settings()
    catalog = read_catalog(settings.catalog_path).sample(args.images, random_state=0)
    encoder = load_encoder(args.model, settings)
    paths = catalog["path"].tolist()
    device = encoder.device.type
    print(f"{len(catalog)} corpus images, model {args.model}, batch {args.batch_size}, device {device}, ")
    print(f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, workers {default_workers()}")

    raw = raw_forward_rate(encoder, paths, args.batch_size)
    ours = backfill_rate(encoder, catalog, default_workers(), args.batch_size)
    serial = backfill_rate(encoder, catalog, 0, args.batch_size)
    print(f"\n{'':34}{'images/s':>10}{'vs raw forward':>16}")
    for name, rate in (
        ("raw forward (preprocessed tensors)", raw),
        ("backfill, DataLoader workers", ours),
        ("backfill, decode in main process", serial),
    ):
        print(f"{name:34}{rate:10.1f}{rate / raw:15.2f}x")


if __name__ == "__main__":
    main()
