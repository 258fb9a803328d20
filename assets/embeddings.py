"""Stage: embedding backfill, partitioned over catalog shards (the first hex digit of the image id)."""

import warnings

import dagster as dg
from dagster_ray import RayResource

from dagster_project.resources import WorkspaceResource, settings_on
from imagesearch.embeddings.step import backfill_step
from imagesearch.embeddings.store import SHARD_KEYS

catalog_shards = dg.StaticPartitionsDefinition(list(SHARD_KEYS))


class EmbeddingsConfig(dg.Config):
    model: str | None = None  # registry alias / version / models:/ URI / 'v0'; default from settings


# Single-run backfills (a range of shards in one run, one model load) are what we want, beta or not:
# the beta warning of this one definition is silenced here, not for the whole process.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*backfill_policy", category=dg.BetaWarning)

    @dg.asset(
        deps=["image_catalog", "baseline_model"],
        partitions_def=catalog_shards,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name="index",
        kinds={"pytorch", "parquet"},
        owners=["team:imagesearch"],
        description="Embeddings of every catalog image by one model version, one parquet per shard, "
        "content-addressed by (model version, image id): a re-run embeds only new images, a new model "
        "version embeds everything into its own folder. A range of shards runs as one backfill run.",
    )
    def image_embeddings(
        context: dg.AssetExecutionContext,
        config: EmbeddingsConfig,
        workspace: WorkspaceResource,
        ray_cluster: RayResource,
    ) -> dg.MaterializeResult:
        shards = list(context.partition_keys)
        context.log.info(f"embedding catalog shards {','.join(shards)}")
        report = backfill_step(
            settings_on(workspace, ray_cluster), model=config.model, shards=shards, progress=context.log.info
        )
        if report.failed:
            context.log.warning(f"{len(report.failed)} images could not be read: {report.failed}")
        return dg.MaterializeResult(
            metadata={
                "model": report.model_key,
                "shards": ",".join(shards),
                "embedded": report.embedded,
                "reused": report.reused,
                "dropped": report.dropped,
                "failed": len(report.failed),
                "images_per_second": round(report.images_per_second, 1),
                "executor": "ray" if ray_cluster.connected else "in_process",
                "workers": dg.MetadataValue.json(report.workers),
            }
        )
