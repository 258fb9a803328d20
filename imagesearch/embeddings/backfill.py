"""Embedding backfill: every catalog image embedded by one model version, incrementally, by shard.

Storage is content-addressed by (model version, image id): ``embeddings/<model key>/shard-<k>.parquet``
holds the ids and vectors of catalog shard k (the first hex digit of the id, so an image never
changes shard). A re-run embeds only ids the file lacks; another model version writes another folder.

reader -> mapper -> writer: the executor reads, decodes and embeds (in process: DataLoader workers beside
the forward pass; on Ray: decode tasks and an actor pool of image towers) and hands batches back in
shard order; finished shards are written one by one (atomically), so an interrupted backfill keeps
every shard it completed and resumes from there, whichever executor ran it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from imagesearch.common.executor import EmbeddedBatch, Executor, InProcess
from imagesearch.common.images import DecodeLimits
from imagesearch.common.progress import Progress, progress_bar
from imagesearch.embeddings.backbone_cache import BackboneCache, as_stored
from imagesearch.embeddings.reader import CatalogImages, collate, default_workers, shard_batches
from imagesearch.embeddings.store import (
    SHARD_KEYS,
    read_shard,
    write_shard,
)
from imagesearch.models.encoders import Encoder


@dataclass(slots=True)
class BackfillReport:
    model_key: str
    shards: list[str]
    embedded: int = 0
    reused: int = 0
    dropped: int = 0  # embedded earlier, no longer in the catalog
    failed: dict[str, str] = field(default_factory=dict)  # image id -> reason
    seconds: float = 0.0
    workers: dict[str, int] = field(default_factory=dict)  # "<node>:<pid>" -> images it embedded

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


def backfill(
    encoder: Encoder,
    catalog: pd.DataFrame,
    folder: Path,
    *,
    shards: Iterable[str] = SHARD_KEYS,
    batch_size: int = 32,
    executor: Executor | None = None,
    dtype: str = "float16",
    limits: DecodeLimits,
    progress: Progress = True,
) -> BackfillReport:
    """Bring `folder` (one model version's embeddings) up to date with `catalog` for `shards`."""
    started = time.perf_counter()
    shards = sorted(set(shards))
    report = BackfillReport(folder.name, shards)
    catalog = catalog.assign(shard=catalog["id"].str[0])
    catalog = catalog[catalog["shard"].isin(shards)].sort_values(["shard", "id"]).reset_index(drop=True)
    existing = {shard: read_shard(folder, shard, encoder.dim) for shard in shards}
    done = set().union(*(ids for ids, _ in existing.values()))
    todo = catalog[~catalog["id"].isin(done)]
    report.reused = len(catalog) - len(todo)
    executor = executor or InProcess()
    stream = executor.embed_batches(
        encoder, todo[["id", "path", "shard"]], batch_size=batch_size, limits=limits, progress=progress
    )
    pending: dict[str, list[tuple[list[str], np.ndarray]]] = {shard: [] for shard in shards}

    def flush(shard: str) -> None:
        wanted = set(catalog.loc[catalog["shard"] == shard, "id"])
        report.dropped += write_shard(folder, shard, existing.pop(shard), pending.pop(shard), wanted, dtype)

    for batch in stream:
        report.failed.update(batch.failed)
        report.embedded += len(batch.ids)
        report.workers[batch.worker] = report.workers.get(batch.worker, 0) + len(batch.ids)
        if batch.ids:
            pending[batch.shard].append((batch.ids, batch.vectors))
        for finished in [s for s in existing if s < batch.shard]:  # batches arrive in shard order
            flush(finished)
    for shard in list(existing):
        flush(shard)
    report.seconds = time.perf_counter() - started
    return report


def embed_in_process(
    encoder: Encoder,
    todo: pd.DataFrame,
    batch_size: int,
    workers: int,
    limits: DecodeLimits,
    progress: Progress,
    cache: BackboneCache | None = None,
) -> Iterator[EmbeddedBatch]:
    """The in-process mapper: DataLoader workers (`workers`, 0 = one per spare core) prepare the next
    batches while this process runs the backbone; rows whose pooled features `cache` holds skip both,
    and every vector comes from the encoder's head on (float16-rounded) features, cached or not."""
    workers = workers or default_workers()
    ids, paths = todo["id"].tolist(), todo["path"].tolist()
    batches = shard_batches([i[0] for i in ids], batch_size)
    cached = cache.lookup(paths) if cache is not None else {}
    misses = [[p for p in rows if p not in cached] for rows in batches]
    loaded = iter(
        DataLoader(
            CatalogImages(paths, encoder.preprocessor, limits),
            batch_sampler=[rows for rows in misses if rows],
            num_workers=workers,
            collate_fn=collate,
            prefetch_factor=4 if workers else None,
        )
        if any(misses)
        else ()
    )
    bar = progress_bar(progress, total=len(ids), desc="embedding", unit="img")
    for rows, missing in zip(batches, misses, strict=True):
        features = {p: cached[p] for p in rows if p in cached}
        failed: dict[str, str] = {}
        if missing:
            good, pixels, bad = next(loaded)
            failed = {ids[p]: why for p, why in bad}
            if pixels is not None:
                fresh = as_stored(encoder.pooled_features(pixels))
                if cache is not None:
                    cache.store([paths[p] for p in good], fresh)
                features.update(zip(good, fresh, strict=True))
        done = [p for p in rows if p in features]
        vectors = encoder.encode_features(np.stack([features[p] for p in done]) if done else np.zeros((0, 1)))
        bar.update(len(rows))
        yield EmbeddedBatch(ids[rows[0]][0], [ids[p] for p in done], vectors, failed)
    bar.close()
