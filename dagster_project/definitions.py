"""The Definitions the webserver, the daemon and the CLI load (see workspace.yaml)."""

from __future__ import annotations

import dagster as dg

from assets import catalog, embeddings, index, model
from dagster_project.resources import WorkspaceResource

all_assets = dg.load_assets_from_modules([catalog, model, embeddings, index])
all_checks = dg.load_asset_checks_from_modules([catalog, index])

catalog_job = dg.define_asset_job(
    "catalog_job",
    selection=dg.AssetSelection.assets(catalog.image_catalog),
    description="Scan and catalogue images",
)

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[catalog_job],
    resources={"workspace": WorkspaceResource()},
)
