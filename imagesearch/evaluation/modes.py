"""Vector, keyword and hybrid ranking of the held-out sets: the measured choice of the service's
default `mode`.

The keyword index of an evaluation corpus holds only its images' file names (titles): that is what
any user's collection has, and the other fields (category, tags, labels) are these sets' relevance
judgments, so indexing them would score the labels against themselves. Title queries against the
titles are known-item lookups that keywords find trivially: they are reported apart (their origin).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from imagesearch.catalog.build import title_from_filename
from imagesearch.evaluation.ranking import ModelRankings, score_rankings
from imagesearch.evaluation.sets import DEPTH, EvalSets
from imagesearch.index.keywords import KeywordIndex, hybrid_ranking, write_keyword_index
from imagesearch.index.metadata import RowMetadata

VECTOR, KEYWORD, HYBRID = "vector", "keyword", "hybrid"


def file_name_titles(sets: EvalSets) -> list[str]:
    """Each corpus image's title as a bring-your-own index makes it: from its file name alone."""
    return [title_from_filename(Path(path).name) for path in sets.corpus["path"]]


def mode_results(
    sets: EvalSets, vector: ModelRankings, titles: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """Text-to-image metrics of each mode, per query origin (see `mode_rankings`)."""
    rankings = mode_rankings(sets, vector, titles)
    return {mode: score_rankings(sets, ModelRankings({}, ranked)) for mode, ranked in rankings.items()}


def mode_rankings(
    sets: EvalSets, vector: ModelRankings, titles: list[str]
) -> dict[str, dict[str, list[str]]]:
    """Each text query's ranking in each mode: the vector rankings as given, BM25 over `titles` (one
    per corpus row), and the two fused as the service fuses them (`hybrid_ranking`)."""
    ids = sets.corpus["id"].to_numpy()
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "titles.sqlite"
        frame = pd.DataFrame({"id": ids, "path": sets.corpus["path"], "title": titles})
        write_keyword_index(path, RowMetadata(frame))
        keywords = KeywordIndex([path])
        by_keyword = {text: keywords.search(text, DEPTH)[0] for text in vector.text}
        keywords.close()
    fused = {
        text: hybrid_ranking(np.array([row_of[i] for i in ranking]), by_keyword[text], titles, text)[:DEPTH]
        for text, ranking in vector.text.items()
    }
    return {
        VECTOR: vector.text,
        KEYWORD: {text: ids[rows].tolist() for text, rows in by_keyword.items()},
        HYBRID: {text: ids[rows].tolist() for text, rows in fused.items()},
    }
