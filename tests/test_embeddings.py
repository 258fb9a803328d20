"""Embedding backfill (incremental, resumable, per model version) and the workspace index built on it."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pytest

from assets.catalog import image_catalog
from assets.embeddings import image_embeddings
from assets.index import index_covers_the_catalog, index_recall_above_floor, search_index
from dagster_project.resources import WorkspaceResource
from imagesearch.catalog.build import read_catalog
from imagesearch.catalog.step import catalog_step
from imagesearch.common.executor import InProcess
from imagesearch.common.images import DEFAULT_LIMITS
from imagesearch.common.workspace import data_repo
from imagesearch.embeddings.backfill import backfill
from imagesearch.embeddings.reader import shard_batches
from imagesearch.embeddings.store import SHARD_KEYS, model_key, read_model_embeddings
from imagesearch.index.store import load_index
from tests.conftest import IN_PROCESS, noise_image
from tests.test_cli import run_cli

ALL_SHARDS = {
    "dagster/asset_partition_range_start": SHARD_KEYS[0],
    "dagster/asset_partition_range_end": SHARD_KEYS[-1],
}


def test_model_keys_name_versions_and_folders():
    assert model_key("models:/imagesearch/3") == "imagesearch-v3"
    assert model_key("/tmp/a/v0-saved").startswith("v0-saved-")
    assert model_key("/tmp/a/v0-saved") != model_key("/tmp/b/v0-saved")


def test_batches_never_span_two_shards():
    batches = shard_batches(["b", "a", "b", "a", "a", "c"], batch_size=2)
    assert batches == [[1, 3], [4], [0, 2], [5]]


def catalogued(settings, extra=None):
    catalog_step(settings, record=False, progress=False, extra_images=extra)
    return read_catalog(settings.catalog_path)


def test_backfill_embeds_only_what_is_new_and_matches_direct_encoding(
    workspace_settings, zeroshot_encoder, tmp_path
):
    catalog = catalogued(workspace_settings)
    folder = tmp_path / "emb" / "v0"
    options = {"batch_size": 2, "executor": InProcess(1), "limits": DEFAULT_LIMITS, "progress": False}
    first = backfill(zeroshot_encoder, catalog, folder, **options)
    assert (first.embedded, first.reused, first.failed) == (6, 0, {})

    vectors, missing = read_model_embeddings(folder, catalog["id"])
    direct = zeroshot_encoder.encode_images(catalog["path"].tolist())
    assert missing.empty and np.allclose(vectors, direct, atol=2e-3)  # stored as float16

    extra = tmp_path / "more"
    extra.mkdir()
    noise_image(77).save(extra / "new.png")
    grown = catalogued(workspace_settings, extra=[extra])
    second = backfill(zeroshot_encoder, grown, folder, **options)
    assert (second.embedded, second.reused, second.dropped) == (1, 6, 0)

    shrunk = grown[grown["id"] != catalog["id"].iloc[0]]
    third = backfill(zeroshot_encoder, shrunk, folder, **options)
    assert (third.embedded, third.dropped) == (0, 1)
    assert read_model_embeddings(folder, grown["id"])[1].tolist() == [catalog["id"].iloc[0]]


def test_interrupted_backfill_keeps_finished_shards_and_resumes(
    workspace_settings, zeroshot_encoder, tmp_path, monkeypatch
):
    catalog = catalogued(workspace_settings)
    folder = tmp_path / "emb"
    calls = {"n": 0}
    real = zeroshot_encoder.pooled_features

    def crash_on_third_batch(pixels):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed (injected)")
        return real(pixels)

    monkeypatch.setattr(zeroshot_encoder, "pooled_features", crash_on_third_batch)
    options = {"batch_size": 1, "executor": InProcess(0), "limits": DEFAULT_LIMITS, "progress": False}
    with pytest.raises(RuntimeError, match="injected"):
        backfill(zeroshot_encoder, catalog, folder, **options)
    monkeypatch.undo()
    kept = len(catalog) - len(read_model_embeddings(folder, catalog["id"])[1])
    assert 1 <= kept <= 2  # the shards finished before the crash
    resumed = backfill(zeroshot_encoder, catalog, folder, **options)
    assert (resumed.reused, resumed.embedded) == (kept, len(catalog) - kept)
    assert list(folder.glob("*.tmp-*")) == []


def test_unreadable_image_is_reported_and_the_rest_embedded(workspace_settings, zeroshot_encoder, tmp_path):
    catalog = catalogued(workspace_settings)
    gone = catalog["path"].iloc[2]
    open(gone, "wb").close()  # emptied after cataloguing
    report = backfill(
        zeroshot_encoder,
        catalog,
        tmp_path / "emb",
        executor=InProcess(1),
        limits=DEFAULT_LIMITS,
        progress=False,
    )
    assert report.embedded == 5 and list(report.failed.values()) == ["empty_file"]


def metadata(result, key: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == key]
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


@pytest.mark.usefixtures("dvc_available")
def test_chain_backfills_indexes_versions_and_restores(tmp_path, tiny_folder, saved_encoder):
    workspace = WorkspaceResource(home=str(tmp_path / "ws"), image_dirs=[str(tiny_folder)])
    config = {"ops": {"image_embeddings": {"config": {"model": str(saved_encoder)}}}}
    config["ops"]["search_index"] = {"config": {"model": str(saved_encoder)}}
    assets = [image_catalog, image_embeddings, search_index, index_covers_the_catalog]
    assets.append(index_recall_above_floor)

    def run():
        resources = {"workspace": workspace, "ray_cluster": IN_PROCESS}
        return dg.materialize(assets, resources=resources, run_config=config, tags=ALL_SHARDS)

    first = run()
    assert first.success
    assert metadata(first, "image_embeddings")["embedded"] == 6
    index_meta = metadata(first, "search_index")
    assert (index_meta["vectors"], index_meta["factory"]) == (6, "Flat")
    assert index_meta["recall_at_10_vs_exact"] == 1.0
    assert set(index_meta["dvc_md5"]) == {"data/indexes/catalog"}
    assert index_meta["catalog_dvc_md5"] != "unrecorded"
    assert all(check.passed for check in first.get_asset_check_evaluations())

    noise_image(99).save(tiny_folder / "tools" / "new.png")
    second = run()
    assert metadata(second, "image_embeddings")["embedded"] == 1
    assert metadata(second, "search_index")["vectors"] == 7

    settings = workspace.settings()
    data_repo(settings).restore("index", index_meta["dvc_commit"])
    restored = load_index(settings.search_index_dir)
    assert restored.manifest.count == 6 and restored.index.ntotal == 6


@pytest.mark.usefixtures("dvc_available")
def test_workspace_search_cli_finds_the_query_image_first(tmp_path, tiny_folder, saved_encoder, monkeypatch):
    monkeypatch.setenv("IMAGESEARCH_EMBEDDINGS__MODEL", str(saved_encoder))
    sources = [{"name": "tiny", "path": str(tiny_folder)}]

    def cli(*args):
        result = run_cli(*args, home=tmp_path / "ws", sources=sources)
        assert result.returncode == 0, result.stderr
        return result.stdout

    cli("catalog", "build", "--json")
    assert json.loads(cli("embeddings", "backfill", "--json"))["embedded"] == 6
    cli("index", "from-catalog")
    query = sorted(tiny_folder.rglob("*.png"))[3]
    hits = json.loads(cli("search", "--image", str(query), "-k", "3", "--json"))["results"]
    assert hits[0]["path"] == str(query) and len(hits) == 3
    again = json.loads(cli("embeddings", "backfill", "--json"))
    assert (again["embedded"], again["reused"]) == (0, 6)
