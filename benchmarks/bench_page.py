"""One page's own work, in process: `Ranker.page` on the workspace index (after `make demo`), with one
BLAS thread as on the service's worker. Vector pages of "more like this" queries (what an image upload
gets: no words, MMR on) and hybrid pages of catalog titles; the candidates are searched beforehand,
so only the page is timed (re-score, near-duplicate collapse, order, explanations, facets).

    .venv/bin/python benchmarks/bench_page.py [--queries 200] [--runs 5]

Prints the median ms per page of each kind (the median over `--runs` runs of each run's median).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from threadpoolctl import threadpool_limits

from imagesearch.serving.service import SearchService
from imagesearch.serving.types import PageRequest
from imagesearch.settings import Settings


def page_ms(service: SearchService, cases: list[tuple], page: PageRequest, runs: int) -> float:
    def one_run() -> float:
        samples = []
        for encoded, by_vector, by_keyword in cases:
            started = time.perf_counter()
            service.ranker.page(encoded, by_vector, by_keyword, page, service.config.candidates)
            samples.append(time.perf_counter() - started)
        return float(np.median(samples)) * 1000

    one_run()  # warm
    return float(np.median([one_run() for _ in range(runs)]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    threadpool_limits(1, user_api="blas")
    service = SearchService.from_index(Settings())
    depth, index = service.config.candidates, service.index
    rows = np.linspace(0, index.ntotal - 1, args.queries).astype(int)
    similar = [service.encode([service.similar_query(str(service.row_ids[r]))], {})[0] for r in rows]
    titles = [title for title in index.metadata.title if title][: args.queries]
    texts = [service.encode([service.text_query(title)], {})[0] for title in titles]
    vector_cases = [(q, index.search(q.vector[None], depth)[1][0], None) for q in similar]
    hybrid_cases = [
        (q, index.search(q.vector[None], depth)[1][0], index.keywords.search(q.keyword_text, depth, None)[0])
        for q in texts
    ]
    config = service.config
    vector_page = PageRequest(k=10, offset=0, diversity=config.diversity, dedup=True, mode="vector")
    hybrid_page = PageRequest(k=10, offset=0, diversity=config.diversity, dedup=True, mode="hybrid")
    print(
        json.dumps(
            {
                "vector_page_ms": page_ms(service, vector_cases, vector_page, args.runs),
                "hybrid_page_ms": page_ms(service, hybrid_cases, hybrid_page, args.runs),
            }
        )
    )


if __name__ == "__main__":
    main()
