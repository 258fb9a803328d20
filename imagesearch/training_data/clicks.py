"""Clicks as training data: a position-biased click simulator and the click -> label rules.

Users look at rank r with probability (1/r)**eta (the position-based model), so a click at rank 8
is rarer than one at rank 1 for equally relevant results. `click_pairs` weights every click by the
inverse of that examination probability (inverse propensity weighting), which removes the bias in
expectation, and pairs it with the highest-ranked result the user skipped above it as a negative."""

from __future__ import annotations

import pandas as pd

from imagesearch.feedback.log_schema import LogTables
from imagesearch.feedback.simulation import examination_probability
from imagesearch.training_data.examples import TRAIN, examples_frame


def click_pairs(tables: LogTables, catalog: pd.DataFrame, *, eta: float, max_weight: float) -> pd.DataFrame:
    """Clicked results -> positives (IPW weight), the highest skipped result above -> negative.

    Text queries pair the clicked image with the query text; image queries whose image is in the
    catalog pair the two images. Only train-split images become examples.
    """
    if tables.clicks.empty:
        return examples_frame([])
    train_ids = set(catalog.loc[catalog["split"] == TRAIN, "id"])
    clicked = tables.clicks.drop_duplicates(["query_id", "rank"])
    shown = tables.impressions.merge(
        clicked[["query_id", "rank"]].assign(clicked=True), on=["query_id", "rank"], how="left"
    )
    shown["clicked"] = shown["clicked"].astype("boolean").fillna(False).astype(bool)
    queries = tables.queries.set_index("query_id")
    rows = []
    for query_id, results in shown.sort_values("rank").groupby("query_id", sort=False):
        query = queries.loc[query_id]
        skipped_above: list[str] = []
        for result in results.itertuples():
            if not result.clicked:
                skipped_above.append(result.image_id)
                continue
            weight = min(1.0 / float(examination_probability(result.rank, eta)), max_weight)
            row = _click_row(query, result.image_id, weight, skipped_above[0] if skipped_above else None)
            if row is not None:
                rows.append(row)
    frame = examples_frame(rows)
    used = [frame[c].isna() | frame[c].isin(train_ids) for c in ("anchor_id", "positive_id", "negative_id")]
    keep = used[0] & used[1] & used[2]
    return examples_frame(frame[keep.to_numpy(dtype=bool)])


def _click_row(query: pd.Series, image_id: str, weight: float, negative: str | None) -> dict | None:
    common = {"negative_id": negative, "weight": weight, "source": "clicks"}
    if isinstance(query["query_text"], str) and query["query_text"].strip():
        return {"anchor_id": image_id, "positive_text": query["query_text"], **common}
    if isinstance(query["query_image_hash"], str):
        # the query image's content hash is its catalog id when the image is in the catalog
        return {"anchor_id": query["query_image_hash"], "positive_id": image_id, **common}
    return None
