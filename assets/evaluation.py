"""Stage: held-out evaluation sets, offline evaluation of every model, and eval-gated promotion."""

import dagster as dg

from assets.metadata import version_metadata
from dagster_project.resources import WorkspaceResource
from imagesearch.evaluation.ablation import ablation_step
from imagesearch.evaluation.report import EvaluationReport, served_index_problems
from imagesearch.evaluation.step import eval_sets_step, evaluation_leakage, evaluation_step, promotion_step


@dg.asset(
    deps=["image_catalog", "judgment_pairs"],
    group_name="evaluation",
    kinds={"pandas", "dvc"},
    owners=["team:imagesearch"],
    description="Held-out evaluation sets from the catalog's test split only: image->image (same category, "
    "graded by shared tags), text->image (test tags, test image titles as known-item queries) and the "
    "held-out side of imported judgments. Versioned with DVC; never read by training.",
)
def eval_sets(workspace: WorkspaceResource) -> dg.MaterializeResult:
    result = eval_sets_step(workspace.settings())
    return dg.MaterializeResult(metadata={**result.summary, **version_metadata(result.version)})


@dg.asset(
    deps=["eval_sets", "trained_model", "search_index"],
    group_name="evaluation",
    kinds={"pytorch", "faiss", "mlflow"},
    owners=["team:imagesearch"],
    description="The challenger, the champion, v0 (zero-shot class-name bridge) and raw pretrained image "
    "features on the held-out sets (the test split and each out-of-domain collection's test rows) by exact "
    "search: nDCG, mAP, recall and precision @1/5/10 and MRR for each query type; the served model also "
    "through the served ANN index (ANN loss beside model "
    "quality), and the served index against exact search. Metrics and plots (bars, recall@k curves, "
    "example results) are logged on the challenger's MLflow run.",
)
def offline_evaluation(
    context: dg.AssetExecutionContext, workspace: WorkspaceResource
) -> dg.MaterializeResult:
    report = evaluation_step(workspace.settings(), log=context.log.info)
    table = report.markdown()
    context.log.info("\n" + table)
    return dg.MaterializeResult(
        metadata={
            "table": dg.MetadataValue.md(table),
            "models": dg.MetadataValue.json(report.models),
            "served_index": dg.MetadataValue.json(report.index),
            "mlflow_run_id": report.mlflow_run_id or "no challenger",
        }
    )


@dg.asset_check(
    asset=offline_evaluation,
    blocking=True,
    description="the served index: finite, one vector per catalog "
    "image, recall@10 against exact search at or above evaluation.index_recall_floor",
)
def served_index_is_sound(workspace: WorkspaceResource) -> dg.AssetCheckResult:
    settings = workspace.settings()
    index = EvaluationReport.read(settings.evaluation_dir).index
    floor = settings.evaluation.index_recall_floor
    problems = served_index_problems(index, floor)
    return dg.AssetCheckResult(
        passed=not problems, metadata={**index, "floor": floor, "problems": ", ".join(problems) or "none"}
    )


@dg.asset_check(
    asset=offline_evaluation, blocking=True, description="no evaluation image or held-out query in training"
)
def evaluation_is_held_out(workspace: WorkspaceResource) -> dg.AssetCheckResult:
    problems = evaluation_leakage(workspace.settings())
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": "; ".join(problems) or "none"})


@dg.asset(
    deps=["offline_evaluation", "online_experiment"],
    group_name="evaluation",
    kinds={"mlflow"},
    owners=["team:imagesearch"],
    description="Moves the `champion` alias to the challenger only when its primary held-out metric beats "
    "the champion's by evaluation.promotion_margin and no guarded metric regresses by more than "
    "evaluation.guard_tolerance, and then (evaluation.online_stage) only when the interleaving "
    "experiment has enough decided queries, a significant win or no significant loss "
    "(evaluation.online_require_win) and the guardrails held. Every decision, its reason and its "
    "numbers are tags on the challenger's version.",
)
def model_promotion(context: dg.AssetExecutionContext, workspace: WorkspaceResource) -> dg.MaterializeResult:
    result = promotion_step(workspace.settings())
    context.log.info(
        f"promotion: {'promoted' if result.decision.promote else 'kept'} ({result.decision.reason})"
    )
    return dg.MaterializeResult(
        metadata={
            "promoted": result.decision.promote,
            "reason": result.decision.reason,
            "challenger": result.challenger or "none",
            "champion_before": result.champion or "none",
        }
    )


@dg.asset(
    deps=["eval_sets", "training_examples"],
    group_name="ablation",
    kinds={"pytorch", "mlflow"},
    owners=["team:imagesearch"],
    description="One model per training recipe (and/or per training-data source), each trained with the "
    "same reduced budget (settings.ablation) and evaluated like a challenger on the test split and on "
    "every out-of-domain collection, next to v0 and raw pretrained features: what generalizes. The "
    "comparison table is written to data/ablation/table.md and logged with nested MLflow runs.",
)
def ablation_study(context: dg.AssetExecutionContext, workspace: WorkspaceResource) -> dg.MaterializeResult:
    def log_variant(row: dict) -> None:
        shown = (f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        context.log.info(", ".join(shown))

    result = ablation_step(workspace.settings(), progress=context.log.info, on_variant=log_variant)
    table = result.table.to_markdown(index=False, floatfmt=".3f")
    context.log.info("\n" + table)
    return dg.MaterializeResult(
        metadata={
            "table": dg.MetadataValue.md(table),
            "variants": int(result.table["train_s"].notna().sum()),
            "mlflow_run_id": result.mlflow_run_id,
            "path": str(result.markdown_path),
        }
    )
