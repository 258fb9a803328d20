"""Embedding drift: do recent embeddings still look like the reference ones?

A classifier two-sample test, as drift monitors do it: a logistic regression learns to tell recent
rows from reference rows, and its cross-validated ROC AUC is the drift score. 0.5 means it cannot
tell them apart (no drift); towards 1.0 the recent rows come from elsewhere (new kinds of images, or
users asking for things the catalog was not built for).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

MIN_ROWS = 10  # per side: fewer cannot be cross-validated meaningfully


@dataclass(frozen=True, slots=True)
class DriftScore:
    auc: float | None  # None: too few rows to test
    recent: int
    reference: int

    def as_dict(self) -> dict:
        return asdict(self)


def two_sample_auc(
    reference: np.ndarray, recent: np.ndarray, *, folds: int = 5, max_rows: int = 5000, seed: int = 0
) -> DriftScore:
    """The cross-validated ROC AUC of a classifier separating `recent` rows from `reference` rows
    (each side subsampled to `max_rows`, which bounds the cost whatever the catalog's size)."""
    rng = np.random.default_rng(seed)
    reference, recent = (_subsample(rows, max_rows, rng) for rows in (reference, recent))
    if min(len(reference), len(recent)) < MIN_ROWS:
        return DriftScore(None, len(recent), len(reference))
    features = np.concatenate([reference, recent]).astype(np.float32)
    labels = np.concatenate([np.zeros(len(reference)), np.ones(len(recent))])
    splits = StratifiedKFold(n_splits=min(folds, len(recent)), shuffle=True, random_state=seed)
    classifier = LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced")
    probabilities = cross_val_predict(classifier, features, labels, cv=splits, method="predict_proba")[:, 1]
    return DriftScore(float(roc_auc_score(labels, probabilities)), len(recent), len(reference))


def _subsample(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.asarray(rows)
    return rows if len(rows) <= limit else rows[rng.choice(len(rows), limit, replace=False)]
