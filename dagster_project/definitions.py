"""The Definitions the webserver, the daemon and the CLI load (see workspace.yaml).

The only place on the Dagster side that reads the environment (through `Settings`): the schedule's
cron is a setting, resolved when the definitions are built, not when a module is imported.
"""

from __future__ import annotations

import dagster as dg

from assets import catalog, embeddings, evaluation, index, model, online, training, training_data
from dagster_project import automation
from dagster_project.resources import WorkspaceResource, ray_cluster_resource
from imagesearch.settings import Settings

modules = [catalog, model, embeddings, index, training_data, training, evaluation, online]


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_modules(modules),
        asset_checks=dg.load_asset_checks_from_modules(modules),
        jobs=automation.jobs,
        schedules=[
            automation.weekly_retraining(settings.retrain_cron),
            automation.hourly_online(settings.sensors_on),
        ],
        sensors=automation.all_sensors(settings.sensors_on),
        resources={"workspace": WorkspaceResource(), "ray_cluster": ray_cluster_resource(settings)},
    )


defs = build_definitions(Settings())
