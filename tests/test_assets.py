"""In-process Dagster materializations of the catalog asset on tiny real images."""

from __future__ import annotations

import warnings

import dagster as dg
import pytest

from assets.catalog import catalog_is_consistent, catalog_problems, image_catalog
from dagster_project.definitions import defs
from dagster_project.resources import WorkspaceResource
from imagesearch.catalog.build import read_catalog
from tests.conftest import noise_image

pytestmark = pytest.mark.usefixtures("dvc_available")


def materialize_catalog(workspace: WorkspaceResource) -> dg.ExecuteInProcessResult:
    return dg.materialize([image_catalog, catalog_is_consistent], resources={"workspace": workspace})


def metadata_of(result: dg.ExecuteInProcessResult) -> dict:
    event = result.get_asset_materialization_events()[0]
    return {key: value.value for key, value in event.materialization.metadata.items()}


def test_catalog_asset_materializes_and_rerun_decodes_only_the_new_file(tmp_path, tiny_folder):
    workspace = WorkspaceResource(home=str(tmp_path / "ws"), image_dirs=[str(tiny_folder)])
    first = materialize_catalog(workspace)
    assert first.success
    meta = metadata_of(first)
    assert (meta["catalogued"], meta["decoded_this_run"]) == (6, 6)
    assert set(meta["dvc_md5"]) == {"data/catalog/catalog.parquet", "data/catalog/quarantine.parquet"}
    checks = first.get_asset_check_evaluations()
    assert [c.passed for c in checks] == [True]

    noise_image(123).save(tiny_folder / "animals" / "new.png")
    (tiny_folder / "animals" / "broken.jpg").write_bytes(b"not a jpeg")
    second = materialize_catalog(workspace)
    meta = metadata_of(second)
    assert (meta["catalogued"], meta["decoded_this_run"], meta["reused_from_last_run"]) == (7, 2, 6)
    assert meta["quarantined_by_reason"] == {"not_an_image": 1}
    assert meta["dvc_commit"] != metadata_of(first)["dvc_commit"]


def test_extra_image_dirs_come_from_run_config(tmp_path, tiny_folder):
    extra = tmp_path / "extra"
    extra.mkdir()
    noise_image(321).save(extra / "one.png")
    workspace = WorkspaceResource(home=str(tmp_path / "ws"), image_dirs=[str(tiny_folder)])
    result = dg.materialize(
        [image_catalog],
        resources={"workspace": workspace},
        run_config={"ops": {"image_catalog": {"config": {"extra_image_dirs": [str(extra)]}}}},
    )
    catalog = read_catalog(workspace.settings().catalog_path)
    assert result.success and set(catalog["source"]) == {"images", "extra"}


def test_consistency_rules_catch_bad_catalogs():
    import pandas as pd

    good = pd.DataFrame({"id": ["a", "b"], "split": ["train", "test"]})
    assert catalog_problems(good) == []
    assert catalog_problems(good.iloc[:0]) == ["catalog is empty"]
    assert catalog_problems(pd.DataFrame({"id": ["a", "a"], "split": ["train", "dev"]})) == [
        "1 duplicate ids",
        "unknown splits ['dev']",
    ]


def test_definitions_load_with_the_catalog_job():
    assert defs.resolve_job_def("catalog_job") is not None
    keys = {spec.key for spec in defs.resolve_all_asset_specs()}
    assert {dg.AssetKey("image_catalog"), dg.AssetKey("baseline_model")} <= keys


def test_baseline_model_registers_once_and_becomes_champion(tmp_path):
    from assets.model import baseline_model

    workspace = WorkspaceResource(home=str(tmp_path / "ws"))
    first = metadata_of(dg.materialize([baseline_model], resources={"workspace": workspace}))
    assert (first["model_version"], first["champion_version"]) == ("1", "1")
    again = metadata_of(dg.materialize([baseline_model], resources={"workspace": workspace}))
    assert again["model_version"] == "1" and again["mlflow_run_id"] == first["mlflow_run_id"]


def test_importing_the_assets_installs_no_process_wide_warning_filter():
    import assets.embeddings  # noqa: F401  (its single-run backfill policy is a beta parameter)

    patterns = [f[1].pattern for f in warnings.filters if f[1] is not None]
    assert not any("backfill_policy" in pattern for pattern in patterns)
