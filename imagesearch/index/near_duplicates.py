"""Which rows of an exact (Flat) index are near-duplicates of which: found once, when the index is
loaded, by faiss's range search over the index itself.

A page collapses near-duplicates among its ~100-150 candidates. Computing their cosine matrix per
page is the page's largest product (150 x 150 x 1,664 multiply-adds); looking the pairs up in this
table is a gather. Rows it does not cover (added since the base was built, or any row of an index
it was not built for) are compared on the page itself, so the pairs a page sees are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

BUILD_BATCH = 512  # rows range-searched at once: bounds the memory of one batch's results
# a collection of many copies has pairs in the square of its rows: past this many (~160 MB), no table
MAX_PAIRS = 10_000_000


@dataclass(frozen=True, slots=True)
class NearDuplicateTable:
    """Row r's near-duplicates are `neighbours[starts[r]:starts[r + 1]]` (r itself excluded), for
    the first `covered` rows: those with an inner product above `threshold`."""

    threshold: float
    starts: np.ndarray  # int64, covered + 1 offsets
    neighbours: np.ndarray  # int64 row positions

    @property
    def covered(self) -> int:
        return len(self.starts) - 1

    def pairs_among(self, positions: np.ndarray) -> np.ndarray:
        """near[i, j] for candidates at `positions` (rows, distinct): both covered and near-duplicates."""
        count = len(positions)
        near = np.zeros((count, count), dtype=bool)
        owners = np.flatnonzero(positions < self.covered)
        begin, end = self.starts[positions[owners]], self.starts[positions[owners] + 1]
        lengths = end - begin
        if not lengths.sum():
            return near
        # every owner's neighbour list, concatenated, and which owner each entry belongs to
        owner_of = np.repeat(owners, lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        found = self.neighbours[np.repeat(begin, lengths) + offsets]
        sorter = np.argsort(positions, kind="stable")
        slot = np.minimum(np.searchsorted(positions, found, sorter=sorter), count - 1)
        among = positions[sorter[slot]] == found
        near[owner_of[among], sorter[slot[among]]] = True
        return near


def near_duplicate_table(
    index: faiss.Index | None, threshold: float, max_rows: int, max_pairs: int = MAX_PAIRS
) -> NearDuplicateTable | None:
    """Every row's neighbours above `threshold` (inner product) among all rows of `index`, when it is
    an exact inner-product index of 1 to `max_rows` rows (~1.4 s for 6,882 x 1,664 on 2 cores; the
    cost grows with the square of the rows) with at most `max_pairs` such pairs; else None."""
    exact = isinstance(index, faiss.IndexFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT
    if not exact or not 0 < index.ntotal <= max_rows:
        return None
    starts, neighbours = [np.zeros(1, np.int64)], []
    for first in range(0, index.ntotal, BUILD_BATCH):
        rows = index.reconstruct_n(first, min(BUILD_BATCH, index.ntotal - first))
        limits, _, found = index.range_search(rows, threshold)
        limits = limits.astype(np.int64)
        owner = np.repeat(np.arange(first, first + len(rows)), np.diff(limits))
        others = found != owner  # a row is its own nearest neighbour
        counts = np.bincount(owner[others] - first, minlength=len(rows))
        starts.append(starts[-1][-1] + np.cumsum(counts))
        neighbours.append(found[others])
        if starts[-1][-1] > max_pairs:
            return None
    return NearDuplicateTable(threshold, np.concatenate(starts), np.concatenate(neighbours).astype(np.int64))
