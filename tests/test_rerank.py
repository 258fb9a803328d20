"""Near-duplicate collapse and MMR on hand-made vectors."""

from __future__ import annotations

import numpy as np
import pytest

from imagesearch.serving.rerank import collapse_near_duplicates, mmr


def unit(*rows):
    matrix = np.array(rows, dtype=np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("threshold", "kept"),
    [(0.99, [0, 2]), (0.999999, [0, 1, 2]), (-1.0, [0])],
)
def test_collapse_keeps_the_best_of_each_group(threshold, kept):
    vectors = unit([1, 0], [1, 0.01], [0, 1])  # 0 and 1 are near-duplicates
    assert collapse_near_duplicates(vectors, threshold).tolist() == kept


def test_mmr_with_lambda_one_is_the_relevance_order():
    scores = np.array([0.2, 0.9, 0.5])
    assert mmr(scores, unit([1, 0], [1, 0], [0, 1]), 3, 1.0).tolist() == [1, 2, 0]


def test_mmr_promotes_a_different_result_over_a_copy():
    # candidates 0 and 1 are the same picture; 2 is different and slightly less relevant
    scores = np.array([0.90, 0.89, 0.80])
    vectors = unit([1, 0], [1, 0], [0, 1])
    assert mmr(scores, vectors, 2, 1.0).tolist() == [0, 1]
    # λ=0.7: after 0, candidate 1 is worth 0.7*0.89 - 0.3*1 = 0.323, candidate 2 is 0.7*0.80 - 0 = 0.56
    assert mmr(scores, vectors, 2, 0.7).tolist() == [0, 2]


def test_mmr_never_returns_more_than_there_is():
    assert mmr(np.array([0.5]), unit([1, 0]), 10, 0.5).tolist() == [0]
    assert mmr(np.array([]), np.zeros((0, 2)), 10, 0.5).tolist() == []
