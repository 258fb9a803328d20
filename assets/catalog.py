"""Stage 1: the image catalog."""

from pathlib import Path

import dagster as dg
import pandas as pd

from assets.metadata import version_metadata
from dagster_project.resources import WorkspaceResource
from imagesearch.catalog.build import read_catalog
from imagesearch.catalog.step import catalog_step


class CatalogConfig(dg.Config):
    extra_image_dirs: list[str] = []
    full_rescan: bool = False


@dg.asset(
    group_name="data",
    kinds={"python", "parquet", "dvc"},
    owners=["team:imagesearch"],
    description="Every usable image of the sources (content-hash id, size, format, tags, caption, split) "
    "plus a quarantine table with the reason for each rejected file. Incremental; versioned with DVC.",
)
def image_catalog(config: CatalogConfig, workspace: WorkspaceResource) -> dg.MaterializeResult:
    settings = workspace.settings()
    result = catalog_step(
        settings, extra_images=[Path(p) for p in config.extra_image_dirs], full_rescan=config.full_rescan
    )
    report, version = result.report, result.version
    metadata = {
        "catalogued": report.catalogued,
        "quarantined": report.quarantined,
        "decoded_this_run": report.decoded,
        "reused_from_last_run": report.reused,
        "quarantined_by_reason": dg.MetadataValue.json(report.quarantined_by_reason),
        "splits": dg.MetadataValue.json(report.splits),
        "sources": dg.MetadataValue.json(report.sources),
        "catalog_path": dg.MetadataValue.path(str(settings.catalog_path)),
        **version_metadata(version),
    }
    return dg.MaterializeResult(metadata=metadata)


@dg.asset_check(asset=image_catalog, blocking=True, description="ids unique, splits valid, catalog not empty")
def catalog_is_consistent(workspace: WorkspaceResource) -> dg.AssetCheckResult:
    catalog = read_catalog(workspace.settings().catalog_path)
    problems = catalog_problems(catalog)
    return dg.AssetCheckResult(
        passed=not problems, metadata={"rows": len(catalog), "problems": problems or "none"}
    )


def catalog_problems(catalog: pd.DataFrame) -> list[str]:
    problems = []
    if catalog.empty:
        problems.append("catalog is empty")
    if catalog["id"].duplicated().any():
        problems.append(f"{int(catalog['id'].duplicated().sum())} duplicate ids")
    unknown = set(catalog["split"]) - {"train", "val", "test"}
    if unknown:
        problems.append(f"unknown splits {sorted(unknown)}")
    return problems
