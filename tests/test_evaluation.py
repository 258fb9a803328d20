"""Held-out evaluation sets from a hand-made catalog: test split only, grades as documented."""

from __future__ import annotations

import numpy as np
import pandas as pd

from imagesearch.evaluation.report import served_index_problems
from imagesearch.evaluation.sets import build_eval_sets


def catalog() -> pd.DataFrame:
    rows = [
        ("t1", "test", "animals", ["animals", "cat"], "tabby cat"),
        ("t2", "test", "animals", ["animals", "cat"], "black cat"),
        ("t3", "test", "animals", ["animals"], "dog"),
        ("t4", "test", "tools", ["tools", "cat"], "cat shaped hammer"),
        ("r1", "train", "animals", ["animals", "cat"], "training cat"),
    ]
    frame = pd.DataFrame(rows, columns=["id", "split", "category", "tags", "title"])
    return frame.assign(path=frame["id"] + ".png", tags=frame["tags"].map(np.array))


def test_sets_hold_only_test_images_with_documented_grades():
    judged = pd.DataFrame(
        {"query_text": ["kitten", "kitten"], "image_id": ["t2", "r1"], "grade": [3, 3], "query": "kitten"}
    )
    sets = build_eval_sets(catalog(), judged, max_image_queries=10, tag_max_share=1.0)
    assert set(sets.corpus["id"]) == {"t1", "t2", "t3", "t4"}
    grades = sets.image_qrels.set_index(["query_image_id", "image_id"])["grade"].to_dict()
    assert grades[("t1", "t2")] == 2  # same category, and they share "cat"
    assert grades[("t1", "t3")] == 1  # same category; "animals" is only the category's own name
    assert ("t1", "t4") not in grades and ("t1", "t1") not in grades
    text = sets.text_qrels
    assert set(text.loc[text["query"] == "cat", "image_id"]) == {"t1", "t2", "t4"}
    assert text.loc[text["origin"] == "title"].set_index("query")["image_id"]["dog"] == "t3"
    assert text.loc[text["origin"] == "judgment", "image_id"].tolist() == ["t2"]  # train image dropped
    assert "r1" not in set(sets.image_qrels["image_id"]) | set(text["image_id"])


def test_served_index_problems_name_each_failure():
    sound = {"finite": True, "vectors": 5, "catalog_images": 5, "recall_at_10_vs_exact": 0.9}
    assert served_index_problems(sound, floor=0.8) == []
    broken = {"finite": False, "vectors": 4, "catalog_images": 5, "recall_at_10_vs_exact": float("nan")}
    assert served_index_problems(broken, floor=0.8) == [
        "non-finite vectors",
        "index size differs from the catalog",
        "recall@10 vs exact below 0.8",
    ]
