"""The feedback steps: what the `online_metrics` asset calls (online metrics from the click log), what
the `embedding_drift` asset calls (recent images and queries against the reference), what
`online_experiment` calls (the interleaving experiment against the challenger) and what
`champion_guardrails` calls (roll a promoted champion back when its guardrails degrade)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from imagesearch.common.io import write_atomic, write_parquet_atomic
from imagesearch.common.plots import online_metrics_plot
from imagesearch.evaluation.promotion import (
    OnlineEvidence,
    OnlineRule,
    Rollback,
    decide_rollback,
    guardrail_readings,
)
from imagesearch.feedback.clicklog import ClickLog
from imagesearch.feedback.drift import DriftScore, two_sample_auc
from imagesearch.feedback.log_schema import LogTables
from imagesearch.feedback.online_experiment import (
    champion_pages,
    estimated_eta,
    experiment_report,
    page_guardrails,
)
from imagesearch.feedback.online_metrics import online_metrics
from imagesearch.index.store import LoadedIndex, load_index
from imagesearch.models import registry
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


def experiment_tables(settings: Settings) -> tuple[LogTables, bool]:
    """The click log's tables: real traffic, or the simulated traffic when there is no real one
    (then the second value is True, and every number made from them says simulated)."""
    log = ClickLog(settings.effective_click_log_url)
    real = log.count_queries(simulated=False) > 0
    return log.read(include_simulated=not real), not real


def online_experiment_step(settings: Settings) -> dict:
    """The interleaving experiment against the registry's challenger, its guardrails, the shadow
    summary and the position-bias estimate; written to data/online/experiment.json."""
    tables, simulated = experiment_tables(settings)
    challenger = registry.pinned_alias(settings, registry.CHALLENGER)
    report = experiment_report(tables, challenger) if challenger else {"challenger": None}
    swaps = int((tables.experiments["kind"] == "swap").sum())
    eta = estimated_eta(tables, settings.experiment.min_swap_queries)
    report |= {
        "simulated": simulated,
        "position_bias": {
            "swap_queries": swaps,
            "eta": eta,
            "configured_eta": settings.training_data.propensity_eta,
        },
        "written_at": time.time(),
    }
    write_atomic(
        settings.online_dir / "experiment.json",
        lambda staging: staging.write_text(json.dumps(report, indent=2, default=float)),
    )
    return report


def last_experiment(settings: Settings, challenger: str) -> OnlineEvidence | None:
    """The last experiment report's evidence about `challenger` (None: no report about it)."""
    path = settings.online_dir / "experiment.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return evidence_from_report(report) if report.get("challenger") == challenger else None


def evidence_from_report(report: dict) -> OnlineEvidence:
    """What the promotion rule's online stage reads of an experiment report."""
    rate, arms = report["win_rate"], report["guardrails"]
    differences = report.get("guardrail_differences", {})  # absent from reports of earlier versions
    return OnlineEvidence(
        rate["wins_challenger"],
        rate["wins_champion"],
        rate["p_value"],
        (_number(arms["challenger"]["ctr"]), _number(arms["champion"]["ctr"])),
        (_number(arms["challenger"]["abandonment"]), _number(arms["champion"]["abandonment"])),
        simulated=report.get("simulated", False),
        standard_errors=tuple(  # type: ignore[arg-type]
            differences.get(name, {}).get("standard_error") for name in ("ctr", "abandonment")
        ),
    )


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def rollback_step(settings: Settings) -> Rollback:
    """Roll the champion back to its predecessor when its guardrails on its own pages (no experiment,
    or shadowed) since its promotion degraded against the predecessor's before it (both with enough
    pages)."""
    record = registry.promotion_record(settings)
    if record is None:
        return Rollback(False, "the champion was not promoted by the rule: no predecessor to compare")
    tables, simulated = experiment_tables(settings)
    queries = tables.queries[champion_pages(tables)]
    created = pd.to_datetime(queries["created_at"], utc=True)
    promoted_at = pd.Timestamp(record.promoted_at, unit="s", tz="UTC")
    after = queries["query_id"][(queries["model_version"] == record.champion) & (created >= promoted_at)]
    before = queries["query_id"][(queries["model_version"] == record.previous) & (created < promoted_at)]
    since, earlier = page_guardrails(tables, after), page_guardrails(tables, before)
    needed = settings.evaluation.online_min_queries
    if min(since.pages, earlier.pages) < needed:
        counts = f"{since.pages} pages since, {earlier.pages} before"
        return Rollback(False, f"not enough plain traffic to judge ({counts}; {needed} each needed)")
    errors = (  # of the differences: the two periods are independent pages
        float(np.hypot(since.ctr_error, earlier.ctr_error)),
        float(np.hypot(since.abandonment_error, earlier.abandonment_error)),
    )
    readings = guardrail_readings((since.ctr, earlier.ctr), (since.abandonment, earlier.abandonment), errors)
    decision = decide_rollback(readings, OnlineRule.from_settings(settings.evaluation).guard)
    if decision.roll_back:
        reason = decision.reason + (" (simulated traffic)" if simulated else "")
        registry.roll_back(settings, record, reason)
        return Rollback(True, reason)
    return decision
