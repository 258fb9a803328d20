"""The contrastive losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from imagesearch.training.losses import info_nce, triplet

E = math.e


def unit(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_info_nce_of_orthogonal_pairs():
    # logits = I: each row's cross-entropy is -log(e / (e + 1)), in both directions
    loss = info_nce(unit([1, 0], [0, 1]), unit([1, 0], [0, 1]), 1.0)
    assert loss.item() == pytest.approx(math.log(1 + 1 / E), abs=1e-6)


def test_info_nce_is_symmetric_only_when_the_logits_are():
    anchors, positives = unit([1, 0], [0, 1]), unit([0.6, 0.8], [0.0, 1.0])
    # logits: [[0.6, 0], [0.8, 1]]
    forward = [-math.log(E**0.6 / (E**0.6 + 1)), -math.log(E / (E**0.8 + E))]  # rows
    backward = [-math.log(E**0.6 / (E**0.6 + E**0.8)), -math.log(E / (1 + E))]  # columns
    expected = (sum(forward) / 2 + sum(backward) / 2) / 2
    assert info_nce(anchors, positives, 1.0).item() == pytest.approx(expected, abs=1e-6)


def test_scale_sharpens_the_softmax():
    loss = info_nce(unit([1, 0], [0, 1]), unit([1, 0], [0, 1]), 10.0)
    assert loss.item() == pytest.approx(math.log(1 + E**-10), abs=1e-6)


def test_extra_negative_joins_the_forward_direction_only():
    anchors = positives = unit([1, 0], [0, 1])
    negative = unit([1, 0])  # identical to anchor 0: as similar as its positive
    forward = [-math.log(E / (E + 1 + E)), -math.log(E / (1 + E + 1))]
    backward = [math.log(1 + 1 / E)] * 2
    expected = (sum(forward) / 2 + sum(backward) / 2) / 2
    loss = info_nce(anchors, positives, 1.0, extra_negatives=negative)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    excluded = torch.tensor([[True], [False]])  # row 0 may not treat its own image as a negative
    forward[0] = math.log(1 + 1 / E)
    expected = (sum(forward) / 2 + sum(backward) / 2) / 2
    loss = info_nce(anchors, positives, 1.0, extra_negatives=negative, extra_excluded=excluded)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_same_group_spreads_the_target():
    anchors = positives = unit([1, 0], [0, 1])
    same = torch.tensor([[False, True], [True, False]])
    # each row: target (0.5, 0.5) over logits (1, 0) -> -0.5 log p1 - 0.5 log p0
    p_own, p_other = E / (E + 1), 1 / (E + 1)
    expected = -0.5 * math.log(p_own) - 0.5 * math.log(p_other)
    assert info_nce(anchors, positives, 1.0, same=same).item() == pytest.approx(expected, abs=1e-6)


def test_weights_make_a_weighted_mean():
    anchors, positives = unit([1, 0], [0, 1]), unit([0.6, 0.8], [0.0, 1.0])
    weights = torch.tensor([1.0, 0.0])
    rows = info_nce(anchors[:1], positives[:1], 1.0)  # a single pair has loss 0 (one candidate)
    assert rows.item() == pytest.approx(0.0, abs=1e-7)
    weighted = info_nce(anchors, positives, 1.0, weights=weights)
    forward0 = -math.log(E**0.6 / (E**0.6 + 1))
    backward0 = -math.log(E**0.6 / (E**0.6 + E**0.8))
    assert weighted.item() == pytest.approx((forward0 + backward0) / 2, abs=1e-6)


def test_triplet_uses_the_hardest_negative_and_the_margin():
    anchors, positives = unit([1, 0], [0, 1]), unit([0.6, 0.8], [0.0, 1.0])
    # row 0: positive 0.6, hardest negative 0.0 -> relu(0.2 - 0.6 + 0) = 0
    # row 1: positive 1.0, hardest negative 0.8 -> relu(0.2 - 1.0 + 0.8) = 0 ... at the margin
    assert triplet(anchors, positives, margin=0.2).item() == pytest.approx(0.0, abs=1e-6)
    # margin 0.5: row 0 -> 0, row 1 -> 0.3
    assert triplet(anchors, positives, margin=0.5).item() == pytest.approx(0.15, abs=1e-6)
    negative = unit([0.8, 0.6])  # row 0: hardest is now 0.8 -> relu(0.5 - 0.6 + 0.8) = 0.7
    loss = triplet(anchors, positives, margin=0.5, extra_negatives=negative)
    assert loss.item() == pytest.approx((0.7 + 0.3) / 2, abs=1e-6)
