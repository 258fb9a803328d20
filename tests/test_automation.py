"""The sensors and the schedule on a real workspace, a real Dagster instance and a real MLflow registry."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from dagster_project.automation import (
    RANGE_END,
    RANGE_START,
    champion_sensor,
    embed_new_shards,
    index_after_embeddings,
    new_images_sensor,
)
from dagster_project.definitions import build_definitions, defs
from dagster_project.resources import WorkspaceResource
from imagesearch.catalog.build import read_catalog
from imagesearch.catalog.step import catalog_step
from imagesearch.embeddings.step import backfill_step
from imagesearch.embeddings.store import shard_of
from imagesearch.models import registry
from imagesearch.models.encoders import Encoder
from imagesearch.settings import Settings
from tests.conftest import noise_image


@pytest.fixture
def workspace(tmp_path, tiny_folder, saved_encoder, monkeypatch) -> WorkspaceResource:
    monkeypatch.setenv("IMAGESEARCH_EMBEDDINGS__MODEL", str(saved_encoder))
    return WorkspaceResource(home=str(tmp_path / "ws"), image_dirs=[str(tiny_folder)])


def test_new_images_are_noticed_once_and_again_when_more_arrive(workspace, tiny_folder):
    context = dg.build_sensor_context(resources={"workspace": workspace})
    first = new_images_sensor(context)
    assert isinstance(first, dg.RunRequest) and first.tags["imagesearch/new_files"] == "6"
    assert isinstance(new_images_sensor(context), dg.SkipReason)  # same files: not requested twice
    catalog_step(workspace.settings(), record=False, progress=False)
    assert "every source file" in new_images_sensor(context).skip_message
    noise_image(99).save(tiny_folder / "tools" / "tools_99.png")
    again = new_images_sensor(context)
    assert isinstance(again, dg.RunRequest) and again.tags["imagesearch/new_files"] == "1"


def test_after_a_catalog_run_only_unembedded_shards_are_requested(workspace, tiny_folder):
    settings = workspace.settings()
    catalog_step(settings, record=False, progress=False)
    backfill_step(settings, progress=False)
    noise_image(98).save(tiny_folder / "tools" / "tools_98.png")
    instance = dg.DagsterInstance.ephemeral()
    catalog_run = defs.resolve_job_def("catalog_job").execute_in_process(
        instance=instance, resources={"workspace": workspace}
    )
    new_id = set(read_catalog(settings.catalog_path)["id"]) - set(
        read_catalog(settings.catalog_path).query("relpath != 'tools/tools_98.png'")["id"]
    )
    shard = shard_of(new_id.pop())
    context = dg.build_run_status_sensor_context(
        sensor_name="embed_new_shards",
        dagster_instance=instance,
        dagster_run=catalog_run.dagster_run,
        dagster_event=catalog_run.get_run_success_event(),
        resources={"workspace": workspace},
    )
    request = embed_new_shards(context)
    assert request.tags[RANGE_START] == request.tags[RANGE_END] == shard
    follow = index_after_embeddings(
        dg.build_run_status_sensor_context(
            sensor_name="index_after_embeddings",
            dagster_instance=instance,
            dagster_run=catalog_run.dagster_run,
            dagster_event=catalog_run.get_run_success_event(),
        )
    )
    assert isinstance(follow, dg.RunRequest)


def test_a_moved_champion_alias_requests_a_re_embedding(workspace, saved_encoder, monkeypatch):
    monkeypatch.setenv("IMAGESEARCH_EMBEDDINGS__MODEL", "champion")
    settings = workspace.settings()
    catalog_step(settings, record=False, progress=False)
    context = dg.build_sensor_context(resources={"workspace": workspace})
    assert "no champion" in champion_sensor(context).skip_message
    encoder = Encoder.load(saved_encoder)
    first = registry.log_encoder(encoder, settings, run_name="first", alias=registry.CHAMPION)
    request = champion_sensor(context)
    assert isinstance(request, dg.RunRequest) and request.tags["imagesearch/champion"] == first.version
    shards = sorted({shard_of(i) for i in read_catalog(settings.catalog_path)["id"]})
    assert (request.tags[RANGE_START], request.tags[RANGE_END]) == (shards[0], shards[-1])  # all unembedded
    assert "still version" in champion_sensor(context).skip_message
    second = registry.log_encoder(encoder, settings, run_name="second", alias=registry.CHAMPION)
    moved = champion_sensor(context)
    assert moved.run_key == f"champion-v{second.version}"


def test_weekly_retraining_is_off_until_switched_on_and_covers_the_chain(monkeypatch):
    weekly_retraining = defs.get_schedule_def("weekly_retraining")
    assert weekly_retraining.default_status == dg.DefaultScheduleStatus.STOPPED
    assert weekly_retraining.cron_schedule == "0 3 * * 1"
    # the cron is a setting read when the definitions are built, not frozen at import
    monkeypatch.setenv("IMAGESEARCH_RETRAIN_CRON", "30 4 * * *")
    rebuilt = build_definitions(Settings()).get_schedule_def("weekly_retraining")
    assert rebuilt.cron_schedule == "30 4 * * *"
    job = defs.resolve_job_def("retraining_job")
    keys = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert {"trained_model", "eval_sets", "offline_evaluation", "model_promotion", "click_pairs"} <= keys


def test_drift_requests_retraining_once_per_report_and_only_when_allowed(workspace, monkeypatch):
    from dagster_project.automation import drift_sensor

    settings = workspace.settings()
    context = dg.build_sensor_context(resources={"workspace": workspace})
    assert isinstance(drift_sensor(context), dg.SkipReason)  # no report yet
    settings.online_dir.mkdir(parents=True)
    report = {"threshold": 0.75, "images": {"auc": 0.9}, "queries": {"auc": None}, "written_at": 1.0}
    (settings.online_dir / "drift.json").write_text(json.dumps(report))
    assert "drift.retrain is off" in drift_sensor(context).skip_message
    monkeypatch.setenv("IMAGESEARCH_DRIFT__RETRAIN", "true")
    request = drift_sensor(context)
    assert isinstance(request, dg.RunRequest) and request.tags["imagesearch/drifted"] == "images"
    assert "already requested" in drift_sensor(context).skip_message
    (settings.online_dir / "drift.json").write_text(json.dumps(report | {"images": {"auc": 0.6}}))
    assert "no drift" in drift_sensor(context).skip_message
