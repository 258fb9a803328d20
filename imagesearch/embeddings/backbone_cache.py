"""Pooled backbone features of image files, computed once per backbone and reused by every head.

Every model this project trains by default keeps the pretrained image backbone frozen: v0, the trained
challenger, the raw-feature floor and the classifier-labels source differ only in what they compute
*from* the pooled features. So one backbone pass per image is enough for all of them; a second model's
backfill, the evaluation of three models on the same collections and the classifier labels read the
features back and run only their heads (a few matrix products per batch instead of a CNN forward).

Keyed by the backbone's weights (not its model name: a fine-tuned trunk gets a new key and starts empty)
and its preprocessing, then by file identity (absolute path, size, modification time), so an edited or
replaced file is embedded again. One SQLite file per backbone key, written by the process that embeds;
float16 rows (2.5 KB per image for EfficientNet-Lite0). For the in-process path of one machine: a
cluster backfill does not use it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader

from imagesearch.common.images import DEFAULT_LIMITS, DecodeLimits
from imagesearch.common.progress import Progress, progress_bar
from imagesearch.embeddings.reader import CatalogImages, collate, default_workers
from imagesearch.models.preprocess import Preprocessor

if TYPE_CHECKING:
    from imagesearch.models.encoders import Encoder
    from imagesearch.settings import Settings

_LOOKUP_CHUNK = 500  # SQLite's bound-parameter limit is 999 on older builds


def file_identity(path: str | Path) -> str | None:
    """'absolute path|size|mtime_ns', or None when the file cannot be stat'ed (it is then not cached)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"


class BackboneCache:
    """Pooled features by file identity for one backbone key."""

    def __init__(self, folder: Path, key: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{key}.sqlite"
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS features (file TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def lookup(self, paths: Sequence[str | Path]) -> dict[int, np.ndarray]:
        """Position in `paths` -> float32 features, for the files the cache holds as they are now."""
        identities = [file_identity(p) for p in paths]
        positions: dict[str, list[int]] = {}
        for position, identity in enumerate(identities):
            if identity is not None:
                positions.setdefault(identity, []).append(position)
        found: dict[int, np.ndarray] = {}
        keys = list(positions)
        with closing(self._connect()) as db:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                for identity, blob in db.execute(
                    f"SELECT file, vector FROM features WHERE file IN ({marks})", chunk
                ):
                    vector = np.frombuffer(blob, dtype=np.float16).astype(np.float32)
                    found.update({position: vector for position in positions[identity]})
        return found

    def store(self, paths: Sequence[str | Path], features: np.ndarray) -> None:
        rows = [
            (identity, np.asarray(row, dtype=np.float16).tobytes())
            for path, row in zip(paths, features, strict=True)
            if (identity := file_identity(path)) is not None
        ]
        with closing(self._connect()) as db, db:
            db.executemany("INSERT OR REPLACE INTO features (file, vector) VALUES (?, ?)", rows)


def cache_folder(settings: Settings) -> Path | None:
    """Where pooled backbone features are kept, or None when `embeddings.feature_cache` is off."""
    return settings.backbone_features_dir if settings.embeddings.feature_cache else None


def open_cache(folder: Path | None, key: str) -> BackboneCache | None:
    return BackboneCache(folder, key) if folder is not None else None


def as_stored(features: np.ndarray) -> np.ndarray:
    """Features as the cache gives them back (float16 precision), so a cold and a warm cache make the
    same vectors."""
    return np.asarray(features, dtype=np.float16).astype(np.float32)


def file_features(
    encoder: Encoder,
    paths: Sequence[str],
    folder: Path | None,
    limits: DecodeLimits = DEFAULT_LIMITS,
    progress: Progress = False,
) -> np.ndarray:
    """(files, features) pooled backbone features of `paths`, from the cache in `folder` where it has
    them. For evaluation corpora (validated images): a file that cannot be read is an error."""
    cache = open_cache(folder, encoder.backbone_key)
    found, failed = cached_features(
        paths, encoder.pooled_features, encoder.preprocessor, cache, limits, progress=progress
    )
    if failed:
        position, why = next(iter(failed.items()))
        raise ValueError(f"{len(failed)} images could not be read, e.g. {paths[position]}: {why}")
    return np.stack([found[p] for p in range(len(paths))]) if paths else np.zeros((0, 1), np.float32)


def encode_files(
    encoder: Encoder, paths: Sequence[str], folder: Path | None, limits: DecodeLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """Image vectors of files: one backbone pass per file per trunk, ever, and the encoder's head."""
    return encoder.encode_features(file_features(encoder, paths, folder, limits))


def cached_features(
    paths: Sequence[str],
    compute: Callable[[torch.Tensor], np.ndarray],
    preprocessor: Preprocessor,
    cache: BackboneCache | None,
    limits: DecodeLimits,
    *,
    batch_size: int = 32,
    progress: Progress = False,
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """(position -> pooled features, position -> why it could not be read) for every file in `paths`:
    cached rows read back, the rest decoded in DataLoader workers, run through `compute` and stored."""
    found = cache.lookup(paths) if cache is not None else {}
    missing = [p for p in range(len(paths)) if p not in found]
    failed: dict[int, str] = {}
    batches = decoded_batches([paths[p] for p in missing], preprocessor, limits, batch_size, progress)
    for rows, pixels, bad in batches:
        failed.update({missing[p]: why for p, why in bad})
        if pixels is None:
            continue
        features = as_stored(compute(pixels))
        good = [missing[p] for p in rows]
        if cache is not None:
            cache.store([paths[p] for p in good], features)
        found.update(zip(good, features, strict=True))
    return found, failed


def decoded_batches(
    paths: Sequence[str],
    preprocessor: Preprocessor,
    limits: DecodeLimits,
    batch_size: int,
    progress: Progress,
) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
    """(positions decoded, their pixels, (position, reason) of the rejected) per batch of `paths`."""
    if not paths:
        return
    loader = DataLoader(
        CatalogImages(list(paths), preprocessor, limits),
        batch_size=batch_size,
        num_workers=default_workers(),
        collate_fn=collate,
        prefetch_factor=4,
    )
    bar = progress_bar(progress, total=len(paths), desc="backbone features", unit="img")
    for positions, pixels, failed in loader:
        bar.update(len(positions) + len(failed))
        yield positions, pixels, failed
    bar.close()
