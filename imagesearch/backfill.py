"""Embedding backfill: every catalog image embedded by one model version, incrementally, by shard.

Storage is content-addressed by (model version, image id): ``embeddings/<model key>/shard-<k>.parquet``
holds the ids and vectors of catalog shard k (the first hex digit of the id, so an image never
changes shard). A re-run embeds only ids the file lacks; another model version writes another folder.

reader -> mapper -> writer: DataLoader workers read, decode and preprocess images in parallel with
the forward pass in the main process; finished shards are written one by one (atomically), so an
interrupted backfill keeps every shard it completed and resumes from there.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from imagesearch.embed import read_embeddings, write_embeddings
from imagesearch.encoders import Encoder
from imagesearch.images import DecodeLimits, ImageRejected
from imagesearch.preprocess import Preprocessor

SHARD_KEYS = tuple("0123456789abcdef")


def shard_of(image_id: str) -> str:
    return image_id[0]


def model_key(reference: str) -> str:
    """Folder name for a pinned model reference: 'models:/imagesearch/3' -> 'imagesearch-v3'.

    Other references (an encoder folder, 'v0') get their last name plus a hash of the whole reference.
    """
    match = re.fullmatch(r"models:/([^/@]+)/(\d+)", reference)
    if match:
        return f"{match[1]}-v{match[2]}"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(reference).name).strip("_") or "model"
    return f"{name}-{hashlib.blake2b(reference.encode(), digest_size=4).hexdigest()}"


def shard_path(folder: Path, shard: str) -> Path:
    return folder / f"shard-{shard}.parquet"


@dataclass(slots=True)
class BackfillReport:
    model_key: str
    shards: list[str]
    embedded: int = 0
    reused: int = 0
    dropped: int = 0  # embedded earlier, no longer in the catalog
    failed: dict[str, str] = field(default_factory=dict)  # image id -> reason
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


class CatalogImages(Dataset):
    """Reader: (position, pixels or None, rejection reason) for each catalog row."""

    def __init__(self, paths: list[str], preprocessor: Preprocessor, limits: DecodeLimits):
        self.paths, self.preprocessor, self.limits = paths, preprocessor, limits

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return position, self.preprocessor(Path(self.paths[position]), self.limits), ""
        except ImageRejected as error:
            return position, None, str(error.reason)
        except OSError as error:  # the file vanished or became unreadable since it was catalogued
            return position, None, f"unreadable: {error.strerror or error}"


def collate(items: list[tuple[int, torch.Tensor | None, str]]):
    good = [(position, pixels) for position, pixels, _ in items if pixels is not None]
    failed = [(position, reason) for position, pixels, reason in items if pixels is None]
    pixels = torch.stack([p for _, p in good]) if good else None
    return [position for position, _ in good], pixels, failed


def default_workers() -> int:
    """One decode worker per core left over by the forward pass (at least one)."""
    return max(1, (os.cpu_count() or 2) - 1)


def backfill(
    encoder: Encoder,
    catalog: pd.DataFrame,
    folder: Path,
    *,
    shards: Iterable[str] = SHARD_KEYS,
    batch_size: int = 32,
    workers: int = 0,
    dtype: str = "float16",
    limits: DecodeLimits,
    progress: bool = True,
) -> BackfillReport:
    """Bring `folder` (one model version's embeddings) up to date with `catalog` for `shards`."""
    started = time.perf_counter()
    shards = sorted(set(shards))
    report = BackfillReport(folder.name, shards)
    catalog = catalog.assign(shard=catalog["id"].str[0])
    catalog = catalog[catalog["shard"].isin(shards)].sort_values(["shard", "id"]).reset_index(drop=True)
    existing = {shard: _read_shard(folder, shard, encoder.dim) for shard in shards}
    done = set().union(*(ids for ids, _ in existing.values()))
    todo = catalog[~catalog["id"].isin(done)]
    report.reused = len(catalog) - len(todo)
    stream = _embed_stream(encoder, todo, batch_size, workers or default_workers(), limits, progress)
    pending: dict[str, list[tuple[list[str], np.ndarray]]] = {shard: [] for shard in shards}

    def flush(shard: str) -> None:
        wanted = set(catalog.loc[catalog["shard"] == shard, "id"])
        report.dropped += _write_shard(folder, shard, existing.pop(shard), pending.pop(shard), wanted, dtype)

    for shard, ids, vectors, failed in stream:
        report.failed.update(failed)
        report.embedded += len(ids)
        if len(ids):
            pending[shard].append((ids, vectors))
        for finished in [s for s in existing if s < shard]:  # batches arrive in shard order
            flush(finished)
    for shard in list(existing):
        flush(shard)
    report.seconds = time.perf_counter() - started
    return report


def shard_batches(shard_per_row: list[str], batch_size: int) -> list[list[int]]:
    """Row positions in batches of at most `batch_size`, in shard order, never spanning two shards."""
    batches = []
    for shard in sorted(set(shard_per_row)):
        rows = [i for i, s in enumerate(shard_per_row) if s == shard]
        batches += [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    return batches


def _embed_stream(
    encoder: Encoder,
    todo: pd.DataFrame,
    batch_size: int,
    workers: int,
    limits: DecodeLimits,
    progress: bool,
) -> Iterator[tuple[str, list[str], np.ndarray, dict[str, str]]]:
    """Mapper: (shard, ids, vectors, failures) per batch, while the workers prepare the next ones."""
    ids, paths = todo["id"].tolist(), todo["path"].tolist()
    batches = shard_batches([i[0] for i in ids], batch_size)
    if not batches:
        return
    loader = DataLoader(
        CatalogImages(paths, encoder.preprocessor, limits),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=4 if workers else None,
    )
    bar = tqdm(total=len(ids), desc="embedding", unit="img", disable=not progress, mininterval=2)
    for rows, (good, pixels, failed) in zip(batches, loader, strict=True):
        vectors = (
            encoder.encode_pixels(pixels) if pixels is not None else np.zeros((0, encoder.dim), np.float32)
        )
        bar.update(len(rows))
        yield ids[rows[0]][0], [ids[p] for p in good], vectors, {ids[p]: why for p, why in failed}
    bar.close()


def _read_shard(folder: Path, shard: str, dim: int) -> tuple[list[str], np.ndarray]:
    path = shard_path(folder, shard)
    if not path.exists():
        return [], np.zeros((0, dim), np.float32)
    frame, matrix = read_embeddings(path)
    if matrix.shape[1] != dim:
        raise ValueError(f"{path} holds {matrix.shape[1]}-d vectors, the model makes {dim}-d: delete it")
    return frame["id"].tolist(), matrix


def _write_shard(
    folder: Path,
    shard: str,
    existing: tuple[list[str], np.ndarray],
    new: list[tuple[list[str], np.ndarray]],
    wanted: set[str],
    dtype: str,
) -> int:
    """Writer: old rows still in the catalog + new rows, sorted by id; returns how many were dropped."""
    old_ids, old_vectors = existing
    keep = np.array([image_id in wanted for image_id in old_ids], dtype=bool)
    dropped = int((~keep).sum())
    if not new and not dropped and shard_path(folder, shard).exists():
        return 0
    ids = np.array([i for i, k in zip(old_ids, keep, strict=True) if k] + [i for b, _ in new for i in b])
    matrix = np.concatenate([old_vectors[keep], *(vectors for _, vectors in new)])
    order = np.argsort(ids, kind="stable")
    folder.mkdir(parents=True, exist_ok=True)
    final = shard_path(folder, shard)
    staging = final.with_suffix(f".tmp-{os.getpid()}")
    write_embeddings(pd.DataFrame({"id": ids[order].astype(str)}), matrix[order], staging, dtype=dtype)
    os.replace(staging, final)
    return dropped


def read_model_embeddings(folder: Path, ids: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """float32 vectors for `ids` (in that order) and the ids that have none yet."""
    shards = [read_embeddings(p) for p in sorted(folder.glob("shard-*.parquet"))]
    if not shards:
        return np.zeros((0, 0), np.float32), ids
    frame = pd.concat([f for f, _ in shards], ignore_index=True)
    matrix = np.concatenate([m for _, m in shards]).astype(np.float32)
    position = pd.Series(np.arange(len(frame)), index=frame["id"])
    found = ids.isin(position.index)
    return matrix[position[ids[found]].to_numpy()], ids[~found]
