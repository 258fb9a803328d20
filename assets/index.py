"""Stage: the search index over the catalog's embeddings, chosen, tuned and versioned with DVC."""

import dagster as dg
from dagster_ray import RayResource

from assets.metadata import version_metadata
from dagster_project.resources import WorkspaceResource, settings_on
from imagesearch.catalog.build import read_catalog
from imagesearch.index.step import challenger_index_step, index_step
from imagesearch.index.store import load_index


class SearchIndexConfig(dg.Config):
    model: str | None = None  # must match the model the embeddings were made with; default from settings
    full_rebuild: bool = False  # rebuild even when the change is small enough for a live update


@dg.asset(
    deps=["image_embeddings"],
    group_name="index",
    kinds={"faiss", "dvc"},
    owners=["team:imagesearch"],
    description="FAISS index of every catalog image: structure chosen from size and memory/latency "
    "budgets, search parameters tuned for the target recall@10 against exact search, written "
    "atomically with its id map and manifest, versioned and pushed with DVC.",
)
def search_index(
    config: SearchIndexConfig, workspace: WorkspaceResource, ray_cluster: RayResource
) -> dg.MaterializeResult:
    result = index_step(settings_on(workspace, ray_cluster), model=config.model, full=config.full_rebuild)
    manifest, version = result.manifest, result.version
    metadata = {
        "update": "live (delta beside the base)" if result.delta else "full rebuild",
        "delta_added": (result.delta or {}).get("added", 0),
        "delta_removed": (result.delta or {}).get("removed", 0),
        "model": manifest.model,
        "vectors": result.vectors,
        "factory": manifest.factory,
        "reason": manifest.reason,
        "search_params": dg.MetadataValue.json(manifest.params),
        "recall_at_10_vs_exact": round(manifest.recall_at_10, 4),
        "latency_ms_per_query": round(manifest.latency_ms, 3),
        "bytes_per_vector": manifest.bytes_per_vector,
        "executor": manifest.extra.get("executor", "in_process"),
        "pieces": manifest.extra.get("pieces", 1),
        "shards": len(manifest.extra.get("shards", [])) or 1,
        "catalog_dvc_md5": manifest.extra["catalog_dvc_md5"],
        **version_metadata(version),
    }
    return dg.MaterializeResult(metadata=metadata)


@dg.asset_check(asset=search_index, blocking=True, description="one vector per catalog image, ids equal")
def index_covers_the_catalog(workspace: WorkspaceResource) -> dg.AssetCheckResult:
    settings = workspace.settings()
    loaded = load_index(settings.search_index_dir)
    catalog_ids = set(read_catalog(settings.catalog_path)["id"])
    live = loaded.live_ids
    index_ids = set(live)
    return dg.AssetCheckResult(
        passed=len(live) == len(catalog_ids) and index_ids == catalog_ids,
        metadata={
            "index_vectors": len(live),
            "catalog_images": len(catalog_ids),
            "missing": len(catalog_ids - index_ids),
        },
    )


@dg.asset_check(asset=search_index, blocking=True, description="tuned recall@10 vs exact above the floor")
def index_recall_above_floor(workspace: WorkspaceResource) -> dg.AssetCheckResult:
    settings = workspace.settings()
    manifest = load_index(settings.search_index_dir).manifest
    floor = settings.index.recall_floor
    return dg.AssetCheckResult(
        passed=manifest.recall_at_10 >= floor,
        metadata={"recall_at_10": manifest.recall_at_10, "floor": floor},
    )


@dg.asset(
    deps=["trained_model"],
    group_name="online",
    kinds={"faiss"},
    owners=["team:imagesearch"],
    description="The registry challenger's own index (the catalog embedded by the challenger first), "
    "in indexes/challenger: the second ranker the service interleaves and shadows against the champion "
    "when settings.experiment gives it traffic. Not versioned: it lives until the next challenger.",
)
def challenger_index(workspace: WorkspaceResource) -> dg.MaterializeResult:
    result = challenger_index_step(workspace.settings())
    if result is None:
        return dg.MaterializeResult(metadata={"model": "no challenger registered"})
    return dg.MaterializeResult(
        metadata={
            "model": result.manifest.model,
            "vectors": result.vectors,
            "factory": result.manifest.factory,
            "recall_at_10_vs_exact": round(result.manifest.recall_at_10, 4),
        }
    )
