"""Stage: encoders in the MLflow registry (the zero-shot baseline; training comes later)."""

import dagster as dg

from dagster_project.resources import WorkspaceResource
from imagesearch.models.registry import CHAMPION, alias_version, register_v0


@dg.asset(
    group_name="model",
    kinds={"pytorch", "mlflow"},
    owners=["team:imagesearch"],
    description="The zero-shot baseline v0: the pretrained ImageNet classifier's class probabilities bridged "
    "into the MiniLM text space through prompted class names. Registered in MLflow once per configuration; "
    "becomes champion when the registry has none, so search works before any training.",
)
def baseline_model(workspace: WorkspaceResource) -> dg.MaterializeResult:
    settings = workspace.settings()
    registered = register_v0(settings)
    return dg.MaterializeResult(
        metadata={
            "model_uri": registered.uri,
            "model_version": registered.version,
            "mlflow_run_id": registered.run_id,
            "champion_version": alias_version(settings, CHAMPION) or "none",
            "mlflow_tracking_uri": settings.mlflow_tracking_uri,
        }
    )
