"""Jobs, the weekly retraining schedule and the sensors that keep the index current without anyone.

new images in a source -> catalog_job -> (catalog succeeded) embeddings_job over the shards that
lack embeddings -> (embeddings succeeded) index_job. A new `champion` alias -> embeddings_job over
every shard (a new model embeds into its own folder) -> index_job; the search service polls its index
folder and swaps the new index + model in (SERVICE__RELOAD_POLL_SECONDS).
"""

from __future__ import annotations

import dagster as dg

from assets import catalog, embeddings, evaluation, index, online, training
from dagster_project.resources import WorkspaceResource
from imagesearch.catalog.watch import files_fingerprint, uncatalogued_files, unembedded_shards
from imagesearch.feedback.step import last_drift_report
from imagesearch.models.registry import CHAMPION, alias_version

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"

catalog_job = dg.define_asset_job(
    "catalog_job",
    selection=dg.AssetSelection.assets(catalog.image_catalog),
    description="Scan and catalogue images",
)
embeddings_job = dg.define_asset_job(
    "embeddings_job",
    selection=dg.AssetSelection.assets(embeddings.image_embeddings),
    partitions_def=embeddings.catalog_shards,
    description="Embed the catalog shards of a run's partition range with the configured model (champion)",
)
index_job = dg.define_asset_job(
    "index_job",
    selection=dg.AssetSelection.assets(index.search_index),
    description="Rebuild the search index from the embeddings; the service swaps it in",
)
training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.groups("training_data") | dg.AssetSelection.assets(training.trained_model),
    description="Build training examples from every source, mix them and train a challenger",
)
retraining_job = dg.define_asset_job(
    "retraining_job",
    selection=dg.AssetSelection.groups("training_data", "evaluation")
    | dg.AssetSelection.assets(training.trained_model, index.challenger_index),
    description="Training data, a new challenger and its own index (for the online experiments), "
    "held-out evaluation against the champion and baselines, and the promotion decision",
)
online_job = dg.define_asset_job(
    "online_job",
    selection=dg.AssetSelection.assets(online.online_metrics, online.online_experiment)
    | dg.AssetSelection.assets(online.champion_guardrails, evaluation.model_promotion),
    description="Online metrics, the interleaving experiment, the promotion decision with its online "
    "stage, and the champion's guardrails (which may roll it back)",
)

ablation_job = dg.define_asset_job(
    "ablation_job",
    selection=dg.AssetSelection.groups("ablation"),
    description="Train and evaluate one model per training-data source and one on all (reduced budget)",
)


def weekly_retraining(cron: str) -> dg.ScheduleDefinition:
    """The retraining schedule at `cron` (settings.retrain_cron, IMAGESEARCH_RETRAIN_CRON)."""
    return dg.ScheduleDefinition(
        name="weekly_retraining",
        job=retraining_job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Retrain, evaluate and maybe promote (cron {cron}, IMAGESEARCH_RETRAIN_CRON). "
        "Off until switched on in the UI.",
    )


def hourly_online(running: bool) -> dg.ScheduleDefinition:
    """online_job every hour: on from the start when `running` (settings.sensors_on, `make up`)."""
    return dg.ScheduleDefinition(
        name="hourly_online",
        job=online_job,
        cron_schedule="17 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED,
        description="Every hour: the online experiment, the promotion decision with its online stage and "
        "the champion's guardrails (rollback). Off until switched on, except under `make up`.",
    )


def shard_range(shards: list[str]) -> dict[str, str]:
    """Run tags for one single-run backfill over the shards (the range between the first and last)."""
    return {RANGE_START: min(shards), RANGE_END: max(shards)}


def _new_images(context: dg.SensorEvaluationContext, workspace: WorkspaceResource):
    pending = uncatalogued_files(workspace.settings())
    if not pending:
        return dg.SkipReason("every source file is catalogued")
    fingerprint = files_fingerprint(pending)
    if fingerprint == context.cursor:
        return dg.SkipReason(f"{len(pending)} uncatalogued files already requested")
    context.update_cursor(fingerprint)
    return dg.RunRequest(
        run_key=f"new-images-{fingerprint}", tags={"imagesearch/new_files": str(len(pending))}
    )


def _embed_new_shards(context: dg.RunStatusSensorContext, workspace: WorkspaceResource):
    shards = unembedded_shards(workspace.settings())
    if not shards:
        return dg.SkipReason("every catalog image has embeddings")
    return dg.RunRequest(run_key=f"embed-after-{context.dagster_run.run_id}", tags=shard_range(shards))


def _index_after_embeddings(context: dg.RunStatusSensorContext):
    return dg.RunRequest(run_key=f"index-after-{context.dagster_run.run_id}")


def _champion_moved(context: dg.SensorEvaluationContext, workspace: WorkspaceResource):
    version = alias_version(workspace.settings(), CHAMPION)
    if version is None:
        return dg.SkipReason("no champion registered yet")
    if version == context.cursor:
        return dg.SkipReason(f"champion is still version {version}")
    first_look = context.cursor is None
    context.update_cursor(version)
    shards = unembedded_shards(workspace.settings())
    if first_look and not shards:
        return dg.SkipReason(f"champion version {version} is already embedded")
    return dg.RunRequest(
        run_key=f"champion-v{version}",
        tags={**shard_range(shards or ["0", "f"]), "imagesearch/champion": version},
    )


def index_sensors(running: bool) -> list[dg.SensorDefinition]:
    """The sensors that keep the index current, switched on from the start when `running` (settings
    .sensors_on, which `make up` sets); else off until switched on in the UI."""
    status = dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED
    return [
        dg.sensor(
            name="new_images_sensor",
            job=catalog_job,
            minimum_interval_seconds=60,
            default_status=status,
            description="New or changed image files in a corpus source: catalogue them (the catalog "
            "is incremental)",
        )(_new_images),
        dg.run_status_sensor(
            run_status=dg.DagsterRunStatus.SUCCESS,
            name="embed_new_shards",
            monitored_jobs=[catalog_job],
            request_job=embeddings_job,
            default_status=status,
            description="After a catalog run: embed only the shards that hold images without embeddings",
        )(_embed_new_shards),
        dg.run_status_sensor(
            run_status=dg.DagsterRunStatus.SUCCESS,
            name="index_after_embeddings",
            monitored_jobs=[embeddings_job],
            request_job=index_job,
            default_status=status,
            description="After an embeddings run: rebuild the index (the service polls it and swaps)",
        )(_index_after_embeddings),
        dg.sensor(
            name="champion_sensor",
            job=embeddings_job,
            minimum_interval_seconds=60,
            default_status=status,
            description="The `champion` alias moved in the MLflow registry: embed the catalog with the "
            "new champion, then (index_after_embeddings) rebuild the index the service swaps in",
        )(_champion_moved),
    ]


@dg.sensor(
    job=retraining_job,
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="The last embedding_drift report passed drift.threshold and drift.retrain is on: "
    "request one retraining run per report. Off until switched on in the UI.",
)
def drift_sensor(context: dg.SensorEvaluationContext, workspace: WorkspaceResource):
    settings = workspace.settings()
    if not (settings.online_dir / "drift.json").is_file():
        return dg.SkipReason("no drift report yet: materialize embedding_drift")
    report = last_drift_report(settings)
    if not report["drifted"]:
        return dg.SkipReason("no drift above the threshold in the last report")
    if not settings.drift.retrain:
        return dg.SkipReason(f"drift in {report['drifted']}, but drift.retrain is off")
    stamp = str(report["written_at"])
    if stamp == context.cursor:
        return dg.SkipReason("this report's retraining was already requested")
    context.update_cursor(stamp)
    return dg.RunRequest(run_key=f"drift-{stamp}", tags={"imagesearch/drifted": ",".join(report["drifted"])})


# off until switched on (the definitions build their own, by settings.sensors_on)
new_images_sensor, embed_new_shards, index_after_embeddings, champion_sensor = index_sensors(running=False)


def all_sensors(running: bool) -> list[dg.SensorDefinition]:
    return [*index_sensors(running), drift_sensor]


jobs = [catalog_job, embeddings_job, index_job, training_job, retraining_job, ablation_job, online_job]
