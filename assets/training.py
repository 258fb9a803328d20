"""Stage: contrastive co-training of the two towers, tracked in MLflow, registered as challenger."""

import json

import dagster as dg

from assets.metadata import version_metadata
from dagster_project.resources import WorkspaceResource
from imagesearch.training.selection import IN_DOMAIN_VAL
from imagesearch.training.step import train_step

CHOSEN_ON_VALIDATION = (
    "interpolation",
    "bridge_top_k",
    "bridge_temperature",
    "raw_transform",
    "raw_feature_weight",
    "specialist_weight",
    "gate_quantile",
    "outside_raw_transform",
    "outside_raw_feature_weight",
)


@dg.asset(
    deps=["training_examples"],
    group_name="model",
    kinds={"pytorch", "mlflow", "dvc"},
    owners=["team:imagesearch"],
    description="The image tower trained into the locked MiniLM text space (default head 'anchored': v0's "
    "class-name bridge + a learned residual, raw backbone features appended for image->image) with "
    "symmetric InfoNCE, in-batch and mined hard negatives; epoch and v0<->fine-tuned interpolation "
    "selected on in-domain and out-of-domain validation. "
    "Logged as an MLflow run (params, data hashes, git commit, per-epoch losses and val recall, plots) and "
    "registered as a new version of `imagesearch` with alias `challenger`. Resumes after an interruption.",
)
def trained_model(context: dg.AssetExecutionContext, workspace: WorkspaceResource) -> dg.MaterializeResult:
    def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch")
        context.log.info(f"epoch {epoch}: {shown}")

    outcome = train_step(workspace.settings(), progress=context.log.info, on_epoch=log_epoch)
    result, registered = outcome.result, outcome.registered
    final = {k: round(v, 4) for k, v in result.final.items() if k.startswith("val_")}
    final |= {"selected_epoch": int(result.final.get("epoch", 0))}
    chosen = {key: result.final[key] for key in CHOSEN_ON_VALIDATION if key in result.final}
    return dg.MaterializeResult(
        metadata={
            "model_uri": registered.uri,
            "model_version": registered.version,
            "alias": "challenger",
            "mlflow_run_id": registered.run_id,
            "examples": result.rows,
            "images": result.images,
            "train_seconds": round(result.seconds, 1),
            "feature_cache_seconds": round(result.cache_seconds, 1),
            "resumed_from_epoch": result.resumed_from_epoch,
            "unreadable_images": dg.MetadataValue.json(result.failed),
            "history": dg.MetadataValue.json(result.history),
            "chosen_on_validation": dg.MetadataValue.json(chosen),
            "candidates_on_validation": dg.MetadataValue.json(result.choice_scores),
            **final,
            **version_metadata(outcome.version),
        }
    )


@dg.asset_check(
    asset=trained_model,
    description="every validation recall@10 beats the same towers with untrained heads (epoch 0)",
)
def training_beat_untrained_heads(workspace: WorkspaceResource) -> dg.AssetCheckResult:
    metrics = json.loads(workspace.settings().trained_metrics_path.read_text())
    compared = {
        key: (metrics["untrained"][key], value)
        for key, value in metrics.items()
        if key in IN_DOMAIN_VAL and key in metrics["untrained"]  # out of domain: selection's job
    }
    worse = [key for key, (before, after) in compared.items() if not after > before]
    return dg.AssetCheckResult(
        passed=bool(compared) and not worse,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"untrained_vs_trained": dg.MetadataValue.json(compared), "not_improved": worse or "none"},
    )
