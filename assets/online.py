"""Stage: online metrics of the search service, from its impression/click log."""

import dagster as dg

from dagster_project.resources import WorkspaceResource
from imagesearch.feedback.step import (
    drift_step,
    last_drift_report,
    online_experiment_step,
    online_metrics_step,
    rollback_step,
)


class OnlineMetricsConfig(dg.Config):
    k: int = 10  # CTR@k counts queries with a click in the top k


@dg.asset(
    group_name="online",
    kinds={"python", "sql", "parquet"},
    owners=["team:imagesearch"],
    description="CTR@k, MRR of clicks, abandonment rate and clicks per query, per model version and day "
    "(simulated traffic in rows of its own), from the service's click log, with a plot.",
)
def online_metrics(config: OnlineMetricsConfig, workspace: WorkspaceResource) -> dg.MaterializeResult:
    summary, table, plot = online_metrics_step(workspace.settings(), k=config.k)
    real = summary[~summary["simulated"]]
    return dg.MaterializeResult(
        metadata={
            "queries": int(summary["queries"].sum()),
            "real_queries": int(real["queries"].sum()),
            "by_model_and_day": dg.MetadataValue.json(summary.round(4).to_dict(orient="records")),
            "metrics_path": dg.MetadataValue.path(str(table)),
            "plot_path": dg.MetadataValue.path(str(plot)),
        }
    )


@dg.asset(
    deps=["search_index"],
    group_name="online",
    kinds={"python", "sklearn"},
    owners=["team:imagesearch"],
    description="Embedding drift: a classifier two-sample test (cross-validated ROC AUC; 0.5 = none) of "
    "the served index's newest images against the rest, and of the latest logged text queries against "
    "the ones before them, in the served model's space. Written to data/online/drift.json.",
)
def embedding_drift(workspace: WorkspaceResource) -> dg.MaterializeResult:
    report = drift_step(workspace.settings())
    return dg.MaterializeResult(
        metadata={
            "model": report["model"],
            "images_auc": _shown(report["images"]["auc"]),
            "recent_images": report["images"]["recent"],
            "queries_auc": _shown(report["queries"]["auc"]),
            "recent_queries": report["queries"]["recent"],
            "threshold": report["threshold"],
        }
    )


def _shown(auc: float | None) -> float | str:
    return round(auc, 4) if auc is not None else "too few rows"


@dg.asset_check(
    asset=embedding_drift,
    description="warns when recent images or queries are told apart from the reference above "
    "drift.threshold (ROC AUC); drift_sensor can then request retraining (drift.retrain)",
)
def embedding_drift_below_threshold(workspace: WorkspaceResource) -> dg.AssetCheckResult:
    report = last_drift_report(workspace.settings())
    return dg.AssetCheckResult(
        passed=not report["drifted"],
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"drifted": ", ".join(report["drifted"]) or "none", "threshold": report["threshold"]},
    )


@dg.asset(
    deps=["challenger_index"],
    group_name="online",
    kinds={"python", "sql"},
    owners=["team:imagesearch"],
    description="The interleaving experiment of the registry challenger against the champion, from the "
    "click log: win rate with its 95% interval (overall and per day), each arm's CTR and abandonment "
    "(guardrails), the shadow runs' latency and top-k overlap, and the position-bias estimate of the "
    "randomized slice. Simulated traffic is used only while there is no real traffic, and says so. "
    "model_promotion's online stage reads it (data/online/experiment.json).",
)
def online_experiment(workspace: WorkspaceResource) -> dg.MaterializeResult:
    report = online_experiment_step(workspace.settings())
    rate = report.get("win_rate", {})
    return dg.MaterializeResult(
        metadata={
            "challenger": report["challenger"] or "none registered",
            "simulated": report["simulated"],
            "interleaved_queries": report.get("interleaved_queries", 0),
            "challenger_win_rate": rate.get("rate", "n/a"),
            "interval_95": f"{rate.get('low', 0):.3f}..{rate.get('high', 1):.3f}",
            "p_value": rate.get("p_value", "n/a"),
            "by_day": dg.MetadataValue.json(report.get("by_day", [])),
            "guardrails": dg.MetadataValue.json(report.get("guardrails", {})),
            "shadow": dg.MetadataValue.json(report.get("shadow", {})),
            "position_bias": dg.MetadataValue.json(report["position_bias"]),
        }
    )


@dg.asset(
    group_name="online",
    kinds={"mlflow", "sql"},
    owners=["team:imagesearch"],
    description="Rolls a promoted champion back (the alias to its predecessor, the reason a tag of the "
    "version) when its CTR or abandonment on plain traffic since the promotion degraded against the "
    "predecessor's before it by more than evaluation.online_guard_tolerance, with enough pages of both.",
)
def champion_guardrails(workspace: WorkspaceResource) -> dg.MaterializeResult:
    decision = rollback_step(workspace.settings())
    return dg.MaterializeResult(metadata={"rolled_back": decision.roll_back, "reason": decision.reason})
