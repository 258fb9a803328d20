"""An index built in pieces and searched in shards, as autofaiss and FAISS's distributed recipes do.

Train once on a sample -> one copy of the trained empty index per embedding partition, filled in
parallel -> merged into one index (one box) and, for sharded serving, into S shards. Pieces hold
contiguous row ranges and local ids; merging shifts them to global row positions, and a shard's
searcher adds its first row's offset, so every path answers with the same global positions.
Indexes travel between processes as `faiss.serialize_index` bytes, never pickled.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import faiss
import numpy as np

from imagesearch.index.search import search

MERGEABLE_KINDS = ("flat", "ivf")  # HNSW graphs cannot be merged


def serialize(index: faiss.Index) -> np.ndarray:
    return faiss.serialize_index(index)


def deserialize(blob: np.ndarray) -> faiss.Index:
    return faiss.deserialize_index(np.asarray(blob, dtype=np.uint8))


def read_shard_file(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))


def vectors_in_file(path: Path) -> int:
    """How many vectors an index file holds, without reading its codes into memory."""
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP).ntotal


def fill_piece(trained: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """A copy of the trained empty index (serialized) with `vectors` added under local ids 0..n-1."""
    index = deserialize(trained)
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return serialize(index)


def piece_bounds(shard_per_row: list[str]) -> list[int]:
    """Row bounds of the runs of equal shard keys (rows sorted by shard): one piece per partition."""
    starts = [i for i, shard in enumerate(shard_per_row) if i == 0 or shard != shard_per_row[i - 1]]
    return [*starts, len(shard_per_row)] if shard_per_row else [0, 0]


def merge_pieces(pieces: list[faiss.Index], offsets: list[int]) -> faiss.Index:
    """One index holding every piece, ids shifted to global rows (`offsets[i]`: first row of piece i,
    relative to the first piece). Flat indexes have implicit ids and are appended in order. The pieces
    are left whole (faiss's `merge_from` empties its argument, so each is merged from a copy)."""
    merged = faiss.clone_index(pieces[0])
    ivf = faiss.try_extract_index_ivf(merged) is not None
    for piece, offset in zip(pieces[1:], offsets[1:], strict=True):
        merged.merge_from(faiss.clone_index(piece), offset - offsets[0] if ivf else 0)
    return merged


def group_into_shards(
    pieces: list[faiss.Index], bounds: list[int], shards: int
) -> list[tuple[faiss.Index, int]]:
    """(index, first global row) of `shards` shards made of consecutive pieces of about equal size."""
    shards = min(shards, len(pieces))
    total = bounds[-1] - bounds[0]
    cut = [min(range(len(bounds)), key=lambda b: abs(bounds[b] - total * s / shards)) for s in range(shards)]
    cut = sorted(set(cut) | {0, len(pieces)})
    return [
        (merge_pieces(pieces[lo:hi], bounds[lo:hi]), bounds[lo])
        for lo, hi in itertools.pairwise(cut)
        if hi > lo
    ]


def search_shard(
    index: faiss.Index, offset: int, kind: str, params: dict, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """One shard's top-k with global row positions (-1 stays -1)."""
    scores, positions = search(index, kind, queries, min(k, index.ntotal), params)
    return scores, np.where(positions >= 0, positions + offset, -1)


def merge_top_k(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each query's shard lists (inner product: higher is better)."""
    scores = np.concatenate([s for s, _ in results], axis=1)
    positions = np.concatenate([p for _, p in results], axis=1)
    scores = np.where(positions < 0, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(positions, order, axis=1)


class LocalShards:
    """Shard files searched one after another in this process (the in-process executor's fan-out)."""

    def __init__(self, files: list[Path], offsets: list[int], kind: str, params: dict):
        self.shards = [(read_shard_file(f), o) for f, o in zip(files, offsets, strict=True)]
        self.kind, self.params = kind, params
        self.ntotal = sum(index.ntotal for index, _ in self.shards)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        results = [search_shard(i, o, self.kind, self.params, queries, k) for i, o in self.shards]
        return merge_top_k(results, k)

    def close(self) -> None:
        self.shards = []
