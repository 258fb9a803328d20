"""The Definitions the webserver, the daemon and the CLI load (see workspace.yaml)."""

from __future__ import annotations

import dagster as dg

from assets import catalog, embeddings, evaluation, index, model, online, training, training_data
from dagster_project.resources import WorkspaceResource

all_assets = dg.load_assets_from_modules(
    [catalog, model, embeddings, index, training_data, training, evaluation, online]
)
all_checks = dg.load_asset_checks_from_modules([catalog, index, training_data, training, evaluation])

catalog_job = dg.define_asset_job(
    "catalog_job",
    selection=dg.AssetSelection.assets(catalog.image_catalog),
    description="Scan and catalogue images",
)

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.groups("training_data") | dg.AssetSelection.assets(training.trained_model),
    description="Build training examples from every source, mix them and train a challenger",
)

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[catalog_job, training_job],
    resources={"workspace": WorkspaceResource()},
)
