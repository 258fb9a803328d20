"""The autofaiss peer of bench_ann.py: runs in its own venv (.tools/autofaiss: autofaiss pins numpy<2).

    .tools/autofaiss/bin/python benchmarks/autofaiss_peer.py DATA_DIR BUDGET_MB

DATA_DIR holds vectors.npy, queries.npy and truth.npy; prints one JSON line with the measurements.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from autofaiss import build_index

sys.path.insert(0, str(Path(__file__).parent))
from ann_measure import measure


def main() -> None:
    data, budget_mb = Path(sys.argv[1]), float(sys.argv[2])
    logging.disable(logging.WARNING)
    vectors = np.load(data / "vectors.npy", mmap_mode="r")  # page cache, not a second 7.7 GB copy at 1M
    queries, truth = np.load(data / "queries.npy"), np.load(data / "truth.npy")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        index, infos = build_index(
            embeddings=vectors,
            save_on_disk=False,
            index_path=f"{scratch}/knn.index",
            index_infos_path=f"{scratch}/infos.json",
            max_index_memory_usage=f"{int(budget_mb)}MB",
            current_memory_available="8G",  # this machine: 24 GB, the benchmark holds the vectors too
            metric_type="ip",
            min_nearest_neighbors_to_retrieve=10,
            max_index_query_time_ms=10,
            verbose=logging.ERROR,
        )
    build_seconds = time.perf_counter() - start

    def search(q: np.ndarray, k: int) -> np.ndarray:
        return index.search(q, k)[1]  # autofaiss has set its tuned parameters on the index

    result = measure(search, queries, truth)
    size = len(faiss.serialize_index(index))
    print(
        json.dumps(
            {
                "factory": infos["index_key"],
                "params": infos["index_param"],
                "build_seconds": build_seconds,
                "bytes_per_vector": size / len(vectors),
                "faiss": faiss.__version__,
                **result,
            }
        )
    )


if __name__ == "__main__":
    main()
