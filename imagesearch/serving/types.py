"""What flows through the query path: a prepared query, the page asked for, the answer.

Plain dataclasses with no behaviour, so the worker and the service can both depend on them without
depending on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


class BadQuery(ValueError):
    """The query cannot be answered as asked (empty text, unreadable image, wrong dimension...)."""


@dataclass(frozen=True, slots=True)
class Result:
    id: str
    score: float
    rank: int


@dataclass(slots=True)
class Answer:
    results: list[Result]
    model_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Query:
    """Exactly one of: a text, preprocessed pixels, or a unit vector."""

    text: str | None = None
    pixels: torch.Tensor | None = None
    vector: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class PageRequest:
    k: int
    offset: int
    diversity: float
    dedup: bool
