"""Retrieval metrics as pure functions of ranked ids and relevant sets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def recall_at_k(ranked: Sequence[Sequence[str]], relevant: Sequence[set[str]], k: int) -> float:
    """Mean over queries of |top-k ∩ relevant| / min(k, |relevant|).

    Queries without relevant items are skipped.
    """
    scores = [
        len(set(list(ranking)[:k]) & rel) / min(k, len(rel))
        for ranking, rel in zip(ranked, relevant, strict=True)
        if rel
    ]
    return float(np.mean(scores)) if scores else float("nan")
