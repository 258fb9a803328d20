"""Human relevance judgments: import, validation, the train/eval split by query, training pairs.

A judgments file (CSV or parquet) has one row per (query, image) judgment:

    query_text       the text query (or empty when the query is an image)
    query_image_id   catalog id of the query image (or empty when the query is a text)
    image_id         catalog id of the judged image
    grade            graded relevance: 0 not relevant, 1 somewhat, 2 relevant, 3 perfect

Rows that cannot be used are rejected with a reason and reported, never silently dropped. Queries
(not rows) are split between training and evaluation by a hash of the query, so every judgment of a
query lands on the same side; the evaluation side becomes the qrels of offline evaluation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from imagesearch.training_data.examples import TRAIN, examples_frame

COLUMNS = ("query_text", "query_image_id", "image_id", "grade")
GRADES = (0, 1, 2, 3)
EVAL = "eval"


class JudgmentsError(ValueError):
    """The judgments file itself is unusable (missing, unreadable, wrong columns)."""


@dataclass(frozen=True, slots=True)
class ImportedJudgments:
    accepted: pd.DataFrame  # COLUMNS + query (the key) + split ("train" | "eval")
    rejected: pd.DataFrame  # the offending rows + reason

    @property
    def report(self) -> dict:
        return {
            "accepted": len(self.accepted),
            "rejected": len(self.rejected),
            "rejected_by_reason": self.rejected["reason"].value_counts().to_dict(),
            "queries": {
                side: int(n) for side, n in self.accepted.groupby("split")["query"].nunique().items()
            },
        }


def read_judgments(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise JudgmentsError(f"judgments file {path} does not exist")
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise JudgmentsError(f"cannot read judgments file {path}: {error}") from error
    missing = {"image_id", "grade"} - set(frame.columns)
    if missing or not {"query_text", "query_image_id"} & set(frame.columns):
        raise JudgmentsError(
            f"{path} needs columns image_id, grade and query_text and/or query_image_id; "
            f"has {list(frame.columns)}"
        )
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    return frame[list(COLUMNS)]


def import_judgments(
    frame: pd.DataFrame, catalog: pd.DataFrame, *, eval_fraction: float
) -> ImportedJudgments:
    """Validate every row against the catalog and split the accepted ones by query."""
    frame = frame.copy()
    text = frame["query_text"].astype("string").str.strip().replace("", pd.NA)
    query_image = frame["query_image_id"].astype("string").str.strip().replace("", pd.NA)
    image = frame["image_id"].astype("string").str.strip()
    grade = pd.to_numeric(frame["grade"], errors="coerce")
    known = set(catalog["id"])
    reasons = pd.Series(pd.NA, index=frame.index, dtype="string")

    def reject(mask: pd.Series, reason: str) -> None:
        reasons[mask & reasons.isna()] = reason

    reject(text.isna() & query_image.isna(), "no query: set query_text or query_image_id")
    reject(text.notna() & query_image.notna(), "two queries: set only one of query_text, query_image_id")
    reject(~image.isin(known).fillna(False), "unknown image_id")
    reject(query_image.notna() & ~query_image.isin(known).fillna(False), "unknown query_image_id")
    reject(~grade.isin(GRADES), f"grade must be one of {list(GRADES)}")
    rejected = frame[reasons.notna()].assign(reason=reasons[reasons.notna()])
    ok = reasons.isna()
    accepted = pd.DataFrame(
        {
            "query_text": text[ok],
            "query_image_id": query_image[ok],
            "image_id": image[ok],
            "grade": grade[ok].astype(int),
        }
    )
    accepted["query"] = accepted["query_text"].fillna("image:" + accepted["query_image_id"].fillna(""))
    accepted = accepted.drop_duplicates(["query", "image_id"], keep="last")
    accepted["split"] = [query_side(query, eval_fraction) for query in accepted["query"]]
    return ImportedJudgments(accepted.reset_index(drop=True), rejected.reset_index(drop=True))


def query_side(query: str, eval_fraction: float) -> str:
    """'eval' or 'train' from a hash of the query: stable across runs, machines and file order."""
    position = int(hashlib.blake2b(query.encode(), digest_size=4).hexdigest(), 16) / 0x1_0000_0000
    return EVAL if position < eval_fraction else TRAIN


def judgment_pairs(accepted: pd.DataFrame, catalog: pd.DataFrame, *, seed: int) -> pd.DataFrame:
    """Training rows from the training side: graded positives (weight grade/3), grade-0 hard negatives."""
    train_ids = set(catalog.loc[catalog["split"] == TRAIN, "id"])
    usable = accepted[(accepted["split"] == TRAIN) & accepted["image_id"].isin(train_ids)]
    usable = usable[usable["query_image_id"].isna() | usable["query_image_id"].isin(train_ids)]
    rng = np.random.default_rng(seed)
    rows = []
    for _, judged in usable.groupby("query", sort=True):
        negatives = judged.loc[judged["grade"] == 0, "image_id"].tolist()
        for row in judged[judged["grade"] > 0].itertuples():
            negative = rng.choice(negatives) if negatives else None
            if pd.isna(row.query_image_id):
                rows.append({"anchor_id": row.image_id, "positive_text": row.query_text})
            else:
                rows.append({"anchor_id": row.query_image_id, "positive_id": row.image_id})
            rows[-1] |= {"negative_id": negative, "weight": row.grade / 3, "source": "judgments"}
    return examples_frame(rows)


def eval_qrels(accepted: pd.DataFrame) -> pd.DataFrame:
    """The held-out side, for offline evaluation: query, query_text, query_image_id, image_id, grade."""
    held_out = accepted[accepted["split"] == EVAL]
    return held_out[["query", "query_text", "query_image_id", "image_id", "grade"]].reset_index(drop=True)
