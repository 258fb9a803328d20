"""Real DVC + git in a temporary workspace: record versions, list them, restore an old one."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from imagesearch.catalog.step import CATALOG_STAGE, catalog_step
from imagesearch.common.versioning import VersioningError
from imagesearch.common.workspace import data_repo, init_workspace
from tests.conftest import noise_image

pytestmark = pytest.mark.usefixtures("dvc_available")


def test_init_is_idempotent(workspace_settings):
    init_workspace(workspace_settings)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=workspace_settings.home, capture_output=True, text=True
    )
    init_workspace(workspace_settings)
    again = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=workspace_settings.home, capture_output=True, text=True
    )
    assert head.stdout == again.stdout
    assert (workspace_settings.home / "dvc.yaml").resolve().name == "dvc.yaml"
    assert (workspace_settings.dagster_home / "dagster.yaml").exists()


def test_catalog_versions_are_recorded_pushed_and_restorable(workspace_settings, tiny_folder):
    first = catalog_step(workspace_settings, progress=False)
    noise_image(77).save(tiny_folder / "tools" / "tools_77.png")
    second = catalog_step(workspace_settings, progress=False)
    assert first.version.outputs != second.version.outputs
    assert len(pd.read_parquet(workspace_settings.catalog_path)) == 7

    repo = data_repo(workspace_settings)
    history = repo.history(CATALOG_STAGE)
    assert [v.commit for v in history[:2]] == [second.version.commit, first.version.commit]
    md5 = first.version.outputs["data/catalog/catalog.parquet"]
    assert (workspace_settings.dvc_remote_dir / "files" / "md5" / md5[:2] / md5[2:]).exists()  # pushed

    restored = repo.restore(CATALOG_STAGE, first.version.commit)
    assert restored.outputs == first.version.outputs
    assert len(pd.read_parquet(workspace_settings.catalog_path)) == 6


def test_unchanged_rerun_adds_no_version(workspace_settings):
    first = catalog_step(workspace_settings, progress=False)
    second = catalog_step(workspace_settings, progress=False)
    assert second.version.commit == first.version.commit


def test_dvc_status_is_clean_after_recording(workspace_settings):
    catalog_step(workspace_settings, progress=False)
    dvc = str(workspace_settings.dvc_command)
    status = subprocess.run(
        [dvc, "status", CATALOG_STAGE],
        cwd=workspace_settings.home,
        capture_output=True,
        text=True,
        env={"IMAGESEARCH_HOME": str(workspace_settings.home), "PATH": "/usr/bin:/bin"},
    )
    assert "up to date" in status.stdout.lower() or status.stdout.strip() == "", status.stdout


def test_restoring_an_unknown_revision_is_a_clear_error(workspace_settings):
    catalog_step(workspace_settings, progress=False)
    with pytest.raises(VersioningError):
        data_repo(workspace_settings).restore(CATALOG_STAGE, "0123456789abcdef")
