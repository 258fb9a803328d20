"""From a query's candidates to one page of results.

Combined queries: the normalised weighted sum of the terms' unit vectors is searched. Candidates
come from the vector index, the keyword index, or both fused by reciprocal rank fusion (an exact
title match first: `hybrid_ranking`); each is
scored by its cosine to the query, cut off below `min_score`, near-duplicates collapsed, ordered by
relevance (MMR diversity in vector mode) or date, and explained: each term's share of the score and
the query words the image's title, tags, caption or category hold.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from imagesearch.index.keywords import hybrid_ranking
from imagesearch.index.metadata import words_of
from imagesearch.index.near_duplicates import near_duplicate_table
from imagesearch.index.store import LoadedIndex
from imagesearch.serving.rerank import collapse_near_duplicates, mmr
from imagesearch.serving.types import Answer, BadQuery, Encoded, PageRequest, Query, Result

VECTOR, KEYWORD, HYBRID = "vector", "keyword", "hybrid"
CANCELLED = 1e-6


def combine(query: Query, term_vectors: np.ndarray) -> Encoded | BadQuery:
    """The query's unit vector: its terms' weighted sum, normalised (a BadQuery when they cancel)."""
    weights = np.array([term.weight for term in query.terms], np.float32)
    summed = weights @ term_vectors
    norm = float(np.linalg.norm(summed))
    if norm < CANCELLED:
        return BadQuery("the query's terms cancel out: there is nothing left to search for")
    labels = tuple(term.label or f"term {n + 1}" for n, term in enumerate(query.terms))
    return Encoded(summed / norm, term_vectors, weights, norm, labels, query.keyword_text)


class Ranker:
    """Pages of one served index (the service's model + index pair)."""

    def __init__(
        self, index: LoadedIndex, row_ids: np.ndarray, dedup_threshold: float, table_rows: int = 0
    ) -> None:
        self.index, self.row_ids, self.dedup_threshold = index, row_ids, dedup_threshold
        self.table = near_duplicate_table(index.index, dedup_threshold, table_rows)

    def page(
        self,
        query: Encoded,
        by_vector: np.ndarray | None,
        by_keyword: np.ndarray | None,
        page: PageRequest,
        depth: int,
    ) -> Answer:
        found = ((VECTOR, by_vector), (KEYWORD, by_keyword))
        lists = {name: hits[hits >= 0] for name, hits in found if hits is not None}
        if page.mode == HYBRID and not len(lists[KEYWORD]):  # no word matched: a vector page
            del lists[KEYWORD]
            page = replace(page, mode=VECTOR)
        if len(lists) > 1:
            titles = self.index.metadata.title
            positions = hybrid_ranking(lists[VECTOR], lists[KEYWORD], titles, query.keyword_text)
        else:
            positions = next(iter(lists.values()))
        candidates = self.index.candidate_vectors(positions)
        scores = candidates @ query.vector
        if page.mode == VECTOR:  # the exact score re-orders the ANN's approximate order
            order = np.argsort(-scores, kind="stable")
            positions, candidates, scores = positions[order], candidates[order], scores[order]
        passing = np.flatnonzero(scores >= (-np.inf if page.min_score is None else page.min_score))
        cut_reached = len(passing) < len(scores)
        positions, candidates, scores = positions[passing], candidates[passing], scores[passing]
        if page.dedup:
            kept = collapse_near_duplicates(self.near_duplicates(positions, candidates))
            positions, candidates, scores = positions[kept], candidates[kept], scores[kept]
        picked = self._order(scores, candidates, positions, page)[page.offset : page.offset + page.k]
        ranks = {name: {int(p): r for r, p in enumerate(hits, start=1)} for name, hits in lists.items()}
        asked = list(dict.fromkeys(words_of(query.keyword_text)))
        results = [
            Result(
                str(self.row_ids[positions[i]]),
                float(scores[i]),
                page.offset + rank,
                self.explain(query, candidates[i], int(positions[i]), ranks, asked),
            )
            for rank, i in enumerate(picked, start=1)
        ]
        # a full pool whose weakest candidate still passed the cut-off: more may pass beyond it
        pool_full = depth < self.index.ntotal and any(len(hits) >= depth for hits in lists.values())
        return Answer(
            results,
            self.index.manifest.model,
            total=len(positions),
            total_is_lower_bound=bool(pool_full and not cut_reached),
            facets=self.index.metadata.facets(positions),
        )

    def near_duplicates(self, positions: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """near[i, j]: candidates i and j are near-duplicates. Pairs of rows the index's table covers
        are looked up; a row it does not cover (all of them without a table) is compared here."""
        near = self.table.pairs_among(positions) if self.table else np.zeros((len(positions),) * 2, bool)
        uncovered = np.flatnonzero(positions >= (self.table.covered if self.table else 0))
        if len(uncovered):
            near[uncovered] = candidates[uncovered] @ candidates.T > self.dedup_threshold
            near[uncovered, uncovered] = False  # a row is not its own near-duplicate
        return near

    def _order(self, scores: np.ndarray, candidates: np.ndarray, positions: np.ndarray, page: PageRequest):
        """Candidate indexes in page order: newest first, relevance (with MMR diversity), or the
        keyword / fused order as it came."""
        if page.sort == "date":
            return np.argsort(-self.index.metadata.added_ns[positions], kind="stable")
        if page.mode == VECTOR:
            return mmr(scores, candidates, page.offset + page.k, page.diversity)
        return np.arange(len(positions))

    def explain(
        self, query: Encoded, vector: np.ndarray, position: int, ranks: dict, asked: list[str]
    ) -> dict:
        """Why a result is here: each term's contribution (they sum to the score), the query words
        (`asked`) it holds, and its rank in each list that was fused."""
        similarities = query.term_vectors @ vector
        words = self.index.metadata.words(position)
        terms = zip(query.labels, query.weights, similarities, strict=True)
        return {
            "terms": [
                {
                    "term": label,
                    "weight": float(weight),
                    "similarity": round(float(similarity), 4),
                    "contribution": round(float(weight * similarity / query.norm), 4),
                }
                for label, weight, similarity in terms
            ],
            "keywords": [word for word in asked if word in words or word.rstrip("s") in words],
            "ranks": {name: found.get(position) for name, found in ranks.items()},
        }
