"""Contrastive losses for co-training the towers; each returns one scalar and takes per-row weights.

Rows of `anchors` and `positives` are matched pairs (row i of one goes with row i of the other);
`same` marks other pairs that are also positives (two images of one tag, one text used twice), so
a duplicate in the batch is not pushed away as a negative.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    extra_negatives: torch.Tensor | None = None,
    extra_excluded: torch.Tensor | None = None,
    same: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE on unit vectors: cross-entropy of anchor->positive and positive->anchor.

    `extra_negatives` (hard negatives) join the candidates of the anchor->positive direction;
    `extra_excluded[i, j]` drops extra negative j for row i. With `same`, the target of a row is spread
    evenly over all its positives.
    """
    logits = scale * anchors @ positives.T
    targets = _targets(logits, same)
    forward = logits
    if extra_negatives is not None and len(extra_negatives):
        forward = torch.cat([logits, _excluded(scale * anchors @ extra_negatives.T, extra_excluded)], dim=1)
        targets_forward = torch.cat([targets, targets.new_zeros(len(anchors), len(extra_negatives))], dim=1)
    else:
        targets_forward = targets
    per_row = (_soft_cross_entropy(forward, targets_forward) + _soft_cross_entropy(logits.T, targets.T)) / 2
    return _weighted_mean(per_row, weights)


def triplet(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    *,
    margin: float,
    extra_negatives: torch.Tensor | None = None,
    extra_excluded: torch.Tensor | None = None,
    same: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Margin loss against each anchor's hardest negative (in-batch positives of others, mined ones)."""
    similarity = anchors @ positives.T
    positive = similarity.diagonal()
    excluded = _targets(similarity, same) > 0
    negatives = similarity.masked_fill(excluded, float("-inf"))
    if extra_negatives is not None and len(extra_negatives):
        negatives = torch.cat([negatives, _excluded(anchors @ extra_negatives.T, extra_excluded)], dim=1)
    hardest = negatives.max(dim=1).values
    per_row = F.relu(margin - positive + hardest.clamp(min=-1))
    return _weighted_mean(per_row, weights)


def _excluded(logits: torch.Tensor, excluded: torch.Tensor | None) -> torch.Tensor:
    # a large negative rather than -inf: a zero target times -inf would be nan
    return logits if excluded is None else logits.masked_fill(excluded, -1e4)


def _targets(logits: torch.Tensor, same: torch.Tensor | None) -> torch.Tensor:
    eye = torch.eye(len(logits), device=logits.device, dtype=logits.dtype)
    if same is None:
        return eye
    mask = (same.to(logits.dtype) + eye).clamp(max=1)
    return mask / mask.sum(dim=1, keepdim=True)


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * logits.log_softmax(dim=1)).sum(dim=1)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum().clamp(min=1e-12)
