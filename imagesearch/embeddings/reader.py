"""The backfill's reader: catalog rows -> preprocessed pixels, decoded in DataLoader workers, in
batches that never span two shards (so each shard can be written as soon as it is complete).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from imagesearch.common.images import DecodeLimits, ImageRejected
from imagesearch.models.preprocess import Preprocessor


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


def shard_batches(shard_per_row: list[str], batch_size: int) -> list[list[int]]:
    """Row positions in batches of at most `batch_size`, in shard order, never spanning two shards."""
    batches = []
    for shard in sorted(set(shard_per_row)):
        rows = [i for i, s in enumerate(shard_per_row) if s == shard]
        batches += [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    return batches
