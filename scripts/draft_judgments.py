"""Draft relevance judgments for the default corpus, to be reviewed by people.

For each query word (a word that titles of 5-60 catalog images share), the current champion's top-10
results plus up to 5 more images whose title has the word are graded by rule: 3 when the title has
the word, 1 when only a tag has it, 0 otherwise. The output has the judgments import format
(query_text, query_image_id, image_id, grade). The committed examples/openclipart-judgments.csv was
made with this script: it stands in for human labels on the default corpus, and you would replace it
with your labelers' file.

    .venv/bin/python scripts/draft_judgments.py --queries 60 --out examples/openclipart-judgments.csv
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from imagesearch.catalog.build import read_catalog
from imagesearch.index.store import load_index
from imagesearch.models.registry import load_encoder
from imagesearch.settings import Settings

STOPWORDS = {"with", "from", "and", "the", "icon", "clip", "art", "clipart", "simple", "black", "white"}


def words_of(title: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", str(title).lower()) if len(w) >= 4 and w not in STOPWORDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    settings = Settings()
    catalog = read_catalog(settings.catalog_path)
    title_words = catalog["title"].map(words_of)
    counts = Counter(w for words in title_words for w in words)
    candidates = sorted(w for w, n in counts.items() if 5 <= n <= 60)
    size = min(args.queries, len(candidates))
    queries = np.random.default_rng(0).choice(candidates, size=size, replace=False)
    loaded = load_index(settings.search_index_dir)
    encoder = load_encoder(loaded.manifest.model, settings)
    tags = catalog["tags"].map(lambda t: {str(x).lower() for x in t})
    rows = []
    for query in sorted(queries):
        _, positions = loaded.search(encoder.encode_texts([str(query)]), 10)
        retrieved = [str(loaded.ids.at[int(p), "id"]) for p in positions[0] if p >= 0]
        matching = catalog.loc[title_words.map(lambda w, q=query: q in w), "id"].tolist()
        judged = list(dict.fromkeys(retrieved + [m for m in matching if m not in retrieved][:5]))
        position = pd.Series(range(len(catalog)), index=catalog["id"])
        for image_id in judged:
            i = position[image_id]
            grade = 3 if query in title_words.iloc[i] else 1 if query in tags.iloc[i] else 0
            rows.append({"query_text": query, "query_image_id": "", "image_id": image_id, "grade": grade})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    print(f"{len(rows)} judgments of {len(queries)} queries -> {args.out}")


if __name__ == "__main__":
    main()
