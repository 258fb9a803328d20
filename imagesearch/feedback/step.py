"""The feedback steps: what the `online_metrics` asset calls (online metrics from the click log) and
what the `embedding_drift` asset calls (recent images and queries against the reference)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from imagesearch.common.io import write_atomic, write_parquet_atomic
from imagesearch.common.plots import online_metrics_plot
from imagesearch.feedback.clicklog import ClickLog
from imagesearch.feedback.drift import DriftScore, two_sample_auc
from imagesearch.feedback.online_metrics import online_metrics
from imagesearch.index.store import LoadedIndex, load_index
from imagesearch.models.registry import load_encoder
from imagesearch.settings import Settings


def online_metrics_step(settings: Settings, *, k: int = 10) -> tuple[pd.DataFrame, Path, Path]:
    """Read the workspace's click log; write data/online/metrics.parquet and its plot."""
    summary = online_metrics(ClickLog(settings.effective_click_log_url).read(), k=k)
    folder = settings.online_dir
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "metrics.parquet"
    write_parquet_atomic(summary, table)
    return summary, table, online_metrics_plot(summary, folder / "metrics.png")


def drift_step(settings: Settings) -> dict:
    """Drift of the served index's newest images against the rest, and of the latest text queries
    against the ones before them (in the served model's space); written to data/online/drift.json."""
    config = settings.drift
    loaded = load_index(settings.search_index_dir)
    images = _image_drift(loaded, config.recent_images, config.max_rows)
    texts = ClickLog(settings.effective_click_log_url).latest_texts(2 * config.recent_queries)
    queries = DriftScore(None, 0, 0)
    if len(texts) >= 2 * 10:  # the latest half against the half before it
        encoder = load_encoder(loaded.manifest.model, settings)
        half = len(texts) // 2
        vectors = encoder.encode_texts(texts)
        queries = two_sample_auc(vectors[half:], vectors[:half], max_rows=config.max_rows)
    report = {
        "model": loaded.manifest.model,
        "threshold": config.threshold,
        "images": images.as_dict(),
        "queries": queries.as_dict(),
        "written_at": time.time(),
    }
    path = settings.online_dir / "drift.json"
    write_atomic(path, lambda staging: staging.write_text(json.dumps(report, indent=2)))
    return report


def _image_drift(loaded: LoadedIndex, recent_count: int, max_rows: int) -> DriftScore:
    """The newest images (all the live delta's added ones, if more) against the other live images."""
    live = np.flatnonzero(~loaded.removed) if loaded.removed is not None else np.arange(loaded.ntotal)
    newest = live[np.argsort(-loaded.metadata.added_ns[live], kind="stable")]
    count = max(recent_count, loaded.ntotal - loaded.base_count)
    recent, reference = newest[:count], newest[count:]
    rng = np.random.default_rng(0)
    reference = reference if len(reference) <= max_rows else rng.choice(reference, max_rows, replace=False)
    return two_sample_auc(loaded.candidate_vectors(reference), loaded.candidate_vectors(recent))


def last_drift_report(settings: Settings) -> dict:
    """The last drift report, with `drifted`: the sides (images, queries) above the threshold."""
    report = json.loads((settings.online_dir / "drift.json").read_text())
    report["drifted"] = [
        side
        for side in ("images", "queries")
        if report[side]["auc"] is not None and report[side]["auc"] > report["threshold"]
    ]
    return report
