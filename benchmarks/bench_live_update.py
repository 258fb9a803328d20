"""A live index update vs a full rebuild at 100k vectors.

Takes the 100k-vector service index of bench_service.py (the workspace's vectors topped up with
mixture draws; built there when missing), adds 1,000 new vectors and removes 100, and times:
- the live update: publishing the delta (write_delta) and loading the updated folder as the
  service's swap does (load_index), then the first query;
- the full rebuild of the same 100,900 vectors (choose, train, add, tune, write) with the same budgets.
It checks that every added vector is found first by its own query and that no removed id is returned.

    .venv/bin/python benchmarks/bench_live_update.py [--added 1000] [--removed 100] [--skip-rebuild]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from imagesearch.index.build import build_tuned_index
from imagesearch.index.delta import write_delta
from imagesearch.index.store import load_index
from imagesearch.settings import IndexSettings, Settings

sys.path.insert(0, str(Path(__file__).parent))
from bench_service import sized_index  # a sibling script, not a package

SIZE = 100_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--added", type=int, default=1000)
    parser.add_argument("--removed", type=int, default=100)
    parser.add_argument("--skip-rebuild", action="store_true")
    args = parser.parse_args()
    source = sized_index(SIZE, Settings())
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "index"
        shutil.copytree(source, folder)
        base = load_index(folder)
        rng = np.random.default_rng(1)
        picked = rng.choice(base.ntotal, args.added, replace=False)
        added_vectors = np.asarray(base.vectors[picked], np.float32) + rng.normal(
            0, 0.02, (args.added, base.manifest.dim)
        )
        added_vectors /= np.linalg.norm(added_vectors, axis=1, keepdims=True)
        added = pd.DataFrame(
            {"id": [f"new-{i}" for i in range(args.added)], "path": base.ids["path"].iloc[picked].to_numpy()}
        )
        removed = base.ids["id"].iloc[rng.choice(base.ntotal, args.removed, replace=False)].tolist()

        started = time.perf_counter()
        write_delta(folder, added, added_vectors, removed, base.ntotal)
        publish_s = time.perf_counter() - started
        started = time.perf_counter()
        updated = load_index(folder)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        _, found = updated.search(added_vectors[:1], 10)
        first_query_ms = (time.perf_counter() - started) * 1000
        _, found = updated.search(added_vectors, 10)
        found_first = float(np.mean(updated.ids["id"].to_numpy()[found[:, 0]] == added["id"].to_numpy()))
        removed_rows = np.flatnonzero(updated.ids["id"].isin(removed).to_numpy())
        removed_returned = int(
            np.isin(
                updated.search(np.asarray(base.vectors[removed_rows], np.float32), 10)[1], removed_rows
            ).sum()
        )
        row = {
            "vectors": SIZE,
            "factory": base.manifest.factory,
            "added": args.added,
            "removed": args.removed,
            "live_publish_s": round(publish_s, 3),
            "live_load_s": round(load_s, 3),
            "live_first_query_ms": round(first_query_ms, 2),
            "added_found_first": found_first,
            "removed_returned": removed_returned,
        }
        if not args.skip_rebuild:
            live = updated.ids[~updated.removed]
            kept = ~updated.removed[: base.ntotal]
            vectors = np.concatenate([np.asarray(base.vectors, np.float32)[kept], added_vectors])
            budget_mb = len(vectors) * vectors.shape[1] * 4 / 8 / 2**20
            config = IndexSettings(memory_budget_mb=budget_mb, rerank_budget_mb=2 * budget_mb)
            started = time.perf_counter()
            build_tuned_index(
                vectors,
                live.reset_index(drop=True),
                Path(scratch) / "rebuilt",
                model=base.manifest.model,
                config=config,
            )
            row["full_rebuild_s"] = round(time.perf_counter() - started, 1)
            row["rebuild_over_live"] = round(row["full_rebuild_s"] / (publish_s + load_s), 1)
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
