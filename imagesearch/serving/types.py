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
    explanation: dict | None = None  # each query term's share of the score, matched keywords, ranks


@dataclass(slots=True)
class Answer:
    results: list[Result]
    model_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    total: int = 0  # candidates that passed the filters and the score cut-off
    total_is_lower_bound: bool = False  # the candidate pool ran out before the cut-off did
    facets: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Term:
    """One part of a query: exactly one of a text, preprocessed pixels or a unit vector, weighted
    (a negative weight steers away from it)."""

    text: str | None = None
    pixels: torch.Tensor | None = None
    vector: np.ndarray | None = None
    weight: float = 1.0
    label: str = ""  # how explanations name it


@dataclass(frozen=True, slots=True)
class Query:
    """The weighted sum of its terms' unit vectors, normalised, is what is searched."""

    terms: tuple[Term, ...]

    @classmethod
    def of(cls, **term) -> Query:
        return cls((Term(**term),))

    @property
    def keyword_text(self) -> str:
        """The words keyword search looks for: those of the positive text terms."""
        return " ".join(t.text for t in self.terms if t.text is not None and t.weight > 0)


@dataclass(frozen=True, slots=True)
class Encoded:
    """A query's unit vector, and each term's unit vector and weight (for explanations)."""

    vector: np.ndarray
    term_vectors: np.ndarray
    weights: np.ndarray
    norm: float  # of the weighted sum: a term contributes weight * similarity / norm to the score
    labels: tuple[str, ...]
    keyword_text: str


@dataclass(frozen=True, slots=True)
class PageRequest:
    k: int
    offset: int
    diversity: float
    dedup: bool
    mask: np.ndarray | None = None  # rows the filters keep; None = every row
    min_score: float | None = None
    mode: str = "vector"  # vector | keyword | hybrid
    sort: str = "relevance"  # relevance | date
