"""Result re-ranking after the ANN stage: near-duplicate collapse and MMR diversity (pure functions).

Neither computes the candidates' whole cosine matrix: the collapse takes which pairs are
near-duplicates (looked up in the index's table, or compared on the page), and MMR compares each
pick with the candidates left, k rows of the matrix instead of all of them.
"""

from __future__ import annotations

import numpy as np


def collapse_near_duplicates(near: np.ndarray) -> np.ndarray:
    """Positions to keep, in order: a candidate is dropped when it is near a kept one that ranks before it.

    `near[i, j]`: candidates i and j (sorted best first) are near-duplicates, in either or both
    triangles; so the best of each near-duplicate group survives.
    """
    # earlier[i, j]: i ranks before j and they are near-duplicates. Only a candidate with such an
    # earlier one can be dropped, and only by one that was kept: the greedy loop visits just those.
    earlier = np.triu(near | near.T, k=1)
    kept = np.ones(len(near), dtype=bool)
    for position in np.flatnonzero(earlier.any(axis=0)):
        kept[position] = not (earlier[:position, position] & kept[:position]).any()
    return np.flatnonzero(kept)


def mmr(query_scores: np.ndarray, candidates: np.ndarray | None, k: int, diversity: float) -> np.ndarray:
    """Maximal marginal relevance: greedily pick argmax(λ·relevance - (1-λ)·max similarity to picked).

    `diversity` is λ: 1.0 keeps the relevance order (off; `candidates`, their unit vectors, may then
    be None), lower values trade relevance for variety. Returns positions into the candidates, best
    first.
    """
    count = min(k, len(query_scores))
    if diversity >= 1.0 or count == 0:
        return np.argsort(-query_scores, kind="stable")[:count]
    picked: list[int] = []
    redundancy = np.full(len(query_scores), -np.inf)
    for _ in range(count):
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        value = diversity * query_scores - (1 - diversity) * penalty
        value[picked] = -np.inf
        best = int(np.argmax(value))
        picked.append(best)
        redundancy = np.maximum(redundancy, candidates @ candidates[best])
    return np.array(picked, dtype=np.int64)
