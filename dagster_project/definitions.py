"""The Definitions the webserver, the daemon and the CLI load (see workspace.yaml)."""

from __future__ import annotations

import dagster as dg

from assets import catalog, embeddings, evaluation, index, model, online, training, training_data
from dagster_project import automation
from dagster_project.resources import WorkspaceResource

modules = [catalog, model, embeddings, index, training_data, training, evaluation, online]
all_assets = dg.load_assets_from_modules(modules)
all_checks = dg.load_asset_checks_from_modules(modules)

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=automation.jobs,
    schedules=automation.schedules,
    sensors=automation.sensors,
    resources={"workspace": WorkspaceResource()},
)
