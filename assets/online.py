"""Stage: online metrics of the search service, from its impression/click log."""

import dagster as dg

from dagster_project.resources import WorkspaceResource
from imagesearch.feedback.step import online_metrics_step


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
