"""The keyword index beside the vectors: SQLite FTS5 over titles, tags, captions and categories,
ranked by BM25. A row's FTS rowid is its position in the index (delta rows continue after the base).
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imagesearch.index.metadata import RowMetadata, words_of

KEYWORDS_FILE = "keywords.sqlite"
# BM25 column weights: a title or tag match says more than a word somewhere in a caption
COLUMN_WEIGHTS = (3.0, 2.0, 1.0, 1.0)  # title, tags, caption, category
MAX_QUERY_WORDS = 32
RRF_K = 60  # the constant of Cormack et al. (2009): a rank r contributes 1 / (60 + r)


def write_keyword_index(path: Path, metadata: RowMetadata, first_row: int = 0) -> None:
    """An FTS5 table of every row's words (porter stemming, so "cars" finds "car")."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE VIRTUAL TABLE docs USING fts5("
            "title, tags, caption, category, tokenize='porter unicode61')"
        )
        db.executemany(
            "INSERT INTO docs(rowid, title, tags, caption, category) VALUES (?, ?, ?, ?, ?)",
            (
                (
                    first_row + row,
                    metadata.title[row],
                    " ".join(metadata.tags[row]),
                    metadata.caption[row],
                    metadata.category[row].replace("/", " "),
                )
                for row in range(metadata.count)
            ),
        )
    path.chmod(0o444)


def match_expression(text: str) -> str | None:
    """Any of the text's words, each quoted (so no word is read as FTS5 syntax); None without words."""
    words = list(dict.fromkeys(words_of(text)))[:MAX_QUERY_WORDS]
    return " OR ".join(f'"{word}"' for word in words) if words else None


class KeywordIndex:
    """BM25 search over one or more FTS5 files (the base index's, and its delta's), read-only."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = [path for path in paths if path.is_file()]
        self._connections: dict[Path, sqlite3.Connection] = {}

    def search(
        self, text: str, limit: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(positions, BM25 scores, higher is better) of the best `limit` rows matching any word of
        `text`; with `allowed` (a row mask), only rows it keeps."""
        expression = match_expression(text)
        if expression is None or not self.paths:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        weights = ", ".join(map(str, COLUMN_WEIGHTS))
        # ordered by the weighted score itself (FTS5's `rank` is the unweighted one); rows are read
        # lazily, so with a filter the reading stops once `limit` of them passed it
        query = (
            f"SELECT rowid, -bm25(docs, {weights}) AS score FROM docs WHERE docs MATCH ? ORDER BY score DESC"
        )
        found: list[tuple[int, float]] = []
        for path in self.paths:
            rows = self._connection(path).execute(query, (expression,))
            kept = (hit for hit in rows if allowed is None or allowed[hit[0]])
            found += itertools.islice(kept, limit)
        found.sort(key=lambda hit: -hit[1])
        found = found[:limit]
        return np.array([r for r, _ in found], np.int64), np.array([s for _, s in found], np.float32)

    def _connection(self, path: Path) -> sqlite3.Connection:
        # one reader per file, used by the service's keyword-lookup thread only; immutable: no locking
        if path not in self._connections:
            uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
            self._connections[path] = sqlite3.connect(uri, uri=True, check_same_thread=False)
        return self._connections[path]

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()


def reciprocal_rank_fusion(rankings: list[np.ndarray], k: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """(items, fused scores) best first: an item at rank r (from 1) of a ranking gains 1 / (k + r).
    Ties keep the order in which the items were first met."""
    rankings = [np.asarray(ranking, np.int64) for ranking in rankings]
    items = np.concatenate([np.empty(0, np.int64), *rankings])
    gains = np.concatenate([np.empty(0), *(1.0 / (k + np.arange(1, len(r) + 1)) for r in rankings)])
    unique, first_met, inverse = np.unique(items, return_index=True, return_inverse=True)
    fused = np.bincount(inverse, weights=gains, minlength=len(unique))
    order = np.lexsort((first_met, -fused))
    return unique[order], fused[order]


def hybrid_ranking(
    by_vector: np.ndarray, by_keyword: np.ndarray, titles: Sequence[str], text: str
) -> np.ndarray:
    """Rows of a hybrid page, best first: the keyword hits whose title is exactly the query's words
    (in keyword order), then the reciprocal rank fusion of both lists. Fusion alone lets rows that
    both lists rank fairly high outrank the one image a known-item lookup names (rank 1 by keywords,
    far down by vector): in the demo's title lookups it kept that image out of the top two on most
    pages."""
    asked = words_of(text)
    exact = np.array([row for row in by_keyword if words_of(titles[row]) == asked], np.int64)
    fused = reciprocal_rank_fusion([by_vector, by_keyword])[0]
    return np.concatenate([exact, fused[~np.isin(fused, exact)]])
