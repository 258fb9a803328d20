"""The feedback step: what the `online_metrics` asset calls (online metrics from the click log)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from imagesearch.common.io import write_parquet_atomic
from imagesearch.common.plots import online_metrics_plot
from imagesearch.feedback.clicklog import ClickLog
from imagesearch.feedback.online_metrics import online_metrics
from imagesearch.settings import Settings


def online_metrics_step(settings: Settings, *, k: int = 10) -> tuple[pd.DataFrame, Path, Path]:
    """Read the workspace's click log; write data/online/metrics.parquet and its plot."""
    summary = online_metrics(ClickLog(settings.effective_click_log_url).read(), k=k)
    folder = settings.online_dir
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "metrics.parquet"
    write_parquet_atomic(summary, table)
    return summary, table, online_metrics_plot(summary, folder / "metrics.png")
