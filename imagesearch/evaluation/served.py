"""The index the service serves, seen by the offline evaluation.

Two views: a soundness check (finite vectors, one per catalog image, ANN recall@10 against exact
search with the same leave-one-out recall that tuning uses), and the served model's rankings through
that ANN index, so the evaluation table shows what the index loses next to the exact-search row.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from imagesearch.catalog.build import read_catalog
from imagesearch.evaluation.ranking import ModelRankings
from imagesearch.evaluation.sets import DEPTH, EvalSets
from imagesearch.index.store import load_index
from imagesearch.index.tune import recall_against_exact
from imagesearch.models import registry
from imagesearch.settings import Settings

SERVED_DEPTH = 500  # ANN results per query through the served index, before keeping test images only


def served_index_check(settings: Settings, sets: EvalSets) -> dict:
    """The index the service serves: finite, one vector per catalog image, ANN recall@10 vs exact."""
    loaded = load_index(settings.search_index_dir)
    vectors = np.asarray(loaded.vectors, dtype=np.float32)
    rows = pd.Index(loaded.ids["id"]).get_indexer(sets.corpus["id"])
    query_rows = rows[rows >= 0]
    recall = (
        recall_against_exact(lambda queries, k: loaded.search(queries, k)[1], vectors, query_rows)
        if len(query_rows)
        else math.nan
    )
    return {
        "model": loaded.manifest.model,
        "factory": loaded.manifest.factory,
        "vectors": int(loaded.ntotal),
        "catalog_images": len(read_catalog(settings.catalog_path)),
        "finite": bool(np.isfinite(vectors).all()),
        "recall_at_10_vs_exact": recall,
        "queries": len(query_rows),
    }


def rankings_through_served_index(
    settings: Settings, sets: EvalSets, models: dict[str, str], exact: dict[str, ModelRankings]
) -> tuple[str, ModelRankings] | None:
    """The served model's rankings through the served (ANN) index, kept to test images.

    Next to the same model's exact-search row, the difference is what the ANN index loses. Only the
    top SERVED_DEPTH of the whole catalog is searched, so deep metrics (MRR past rank ~50) can only drop.
    """
    loaded = load_index(settings.search_index_dir)
    label = next((name for name, ref in models.items() if ref == loaded.manifest.model), None)
    if label is None:
        return None
    test_ids = set(sets.corpus["id"])
    ids = loaded.ids["id"].to_numpy()
    depth = min(loaded.ntotal, SERVED_DEPTH)

    def ranked(queries: np.ndarray, exclude: list[str | None]) -> list[list[str]]:
        found = loaded.search(np.ascontiguousarray(queries, dtype=np.float32), depth)[1]
        return [
            [i for i in ids[row[row >= 0]] if i in test_ids and i != skip][:DEPTH]
            for row, skip in zip(found, exclude, strict=True)
        ]

    rows = pd.Index(ids).get_indexer(list(exact[label].image))
    queries = [q for q, row in zip(exact[label].image, rows, strict=True) if row >= 0]
    image = dict(zip(queries, ranked(loaded.vectors[rows[rows >= 0]], queries), strict=True))
    texts = list(exact[label].text)
    encoder = registry.load_encoder(loaded.manifest.model, settings)
    text = (
        dict(zip(texts, ranked(encoder.encode_texts(texts), [None] * len(texts)), strict=True))
        if texts
        else {}
    )
    return f"{label} via index", ModelRankings(image, text)
