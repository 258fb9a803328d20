"""Result re-ranking after the ANN stage: near-duplicate collapse and MMR diversity (pure functions).

Both read the candidates' cosine (Gram) matrix, which a page computes once: over ~150 candidates of
1,664 columns it is the page's largest product.
"""

from __future__ import annotations

import numpy as np


def collapse_near_duplicates(similarity: np.ndarray, threshold: float) -> np.ndarray:
    """Positions to keep, in order: a candidate is dropped when its cosine to a kept one exceeds `threshold`.

    `similarity` is the cosine matrix of candidates sorted best first, so the best of each
    near-duplicate group survives.
    """
    # near[i, j]: i ranks before j and they are near-duplicates. Only a candidate with such an earlier
    # one can be dropped, and only by one that was kept: the greedy loop visits just those.
    near = np.triu(similarity > threshold, k=1)
    kept = np.ones(len(similarity), dtype=bool)
    for position in np.flatnonzero(near.any(axis=0)):
        kept[position] = not (near[:position, position] & kept[:position]).any()
    return np.flatnonzero(kept)


def mmr(query_scores: np.ndarray, similarity: np.ndarray | None, k: int, diversity: float) -> np.ndarray:
    """Maximal marginal relevance: greedily pick argmax(λ·relevance - (1-λ)·max similarity to picked).

    `diversity` is λ: 1.0 keeps the relevance order (off; `similarity`, the candidates' cosine
    matrix, may then be None), lower values trade relevance for variety.
    Returns positions into the candidates, best first.
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
        redundancy = np.maximum(redundancy, similarity[best])
    return np.array(picked, dtype=np.int64)
