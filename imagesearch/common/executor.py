"""The executor seam: where the heavy work of a stage runs.

`InProcess` (the default) runs it here, as every stage always has. `imagesearch.cluster.RayExecutor`
runs the same work on a Ray cluster; it is imported only when chosen, so the in-process path never
imports Ray. Stages ask `executor_for(settings)` and call the three methods; each method's result is
the same whichever executor produced it (the tests compare them).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from imagesearch.common.progress import Progress

if TYPE_CHECKING:
    import faiss

    from imagesearch.common.images import DecodeLimits
    from imagesearch.models.encoders import Encoder
    from imagesearch.settings import Settings


@dataclass(slots=True)
class EmbeddedBatch:
    """Vectors of consecutive catalog rows of one shard, and the rows that could not be read."""

    shard: str
    ids: list[str]
    vectors: np.ndarray
    failed: dict[str, str] = field(default_factory=dict)  # image id -> reason
    worker: str = "in-process"  # "<node id>:<pid>" of the process that ran the image tower


class ShardSearch(Protocol):
    """Top-k over an index kept as shards: each shard searched, the lists merged (global positions)."""

    ntotal: int

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


class Executor(Protocol):
    name: str

    def embed_batches(
        self,
        encoder: Encoder,
        todo: pd.DataFrame,
        *,
        batch_size: int,
        limits: DecodeLimits,
        progress: Progress,
    ) -> Iterator[EmbeddedBatch]:
        """Embed `todo` (columns id, path; sorted by shard) and yield batches in that order."""
        ...

    def fill_pieces(self, trained: faiss.Index, vectors: np.ndarray, bounds: list[int]) -> list[faiss.Index]:
        """One copy of the trained empty index per piece [bounds[i], bounds[i+1]) with its rows added."""
        ...

    def shard_search(self, files: list[Path], offsets: list[int], kind: str, params: dict) -> ShardSearch:
        """Searchers for the shard files of one index (row offset of each shard's first vector)."""
        ...


class InProcess:
    """Everything in this process: DataLoader workers for decoding, one add per piece, local shards."""

    name = "in_process"

    def __init__(self, decode_workers: int = 0, features_dir: Path | None = None):
        self.decode_workers = decode_workers
        self.features_dir = features_dir  # the backbone cache's folder; None: no cache

    def embed_batches(self, encoder, todo, *, batch_size, limits, progress) -> Iterator[EmbeddedBatch]:
        from imagesearch.embeddings.backbone_cache import open_cache
        from imagesearch.embeddings.backfill import embed_in_process

        cache = open_cache(self.features_dir, encoder.backbone_key)
        return embed_in_process(encoder, todo, batch_size, self.decode_workers, limits, progress, cache)

    def fill_pieces(self, trained, vectors, bounds):
        from imagesearch.index.pieces import deserialize, fill_piece, serialize

        blob = serialize(trained)
        return [deserialize(fill_piece(blob, vectors[lo:hi])) for lo, hi in itertools.pairwise(bounds)]

    def shard_search(self, files, offsets, kind, params) -> ShardSearch:
        from imagesearch.index.pieces import LocalShards

        return LocalShards(files, offsets, kind, params)


def executor_for(settings: Settings) -> Executor:
    """The executor the settings choose (`cluster.engine`)."""
    if settings.cluster.engine == "ray":
        from imagesearch.cluster import RayExecutor

        return RayExecutor(settings.cluster)
    from imagesearch.embeddings.backbone_cache import cache_folder

    return InProcess(settings.embeddings.workers, cache_folder(settings))
