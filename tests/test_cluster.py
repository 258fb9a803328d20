"""The heavy stages on a real 2-node Ray cluster on loopback (one cluster for the whole module).

Each test proves the work really ran distributed (>= 2 node ids in what it records) and that its
result equals the in-process path's.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster_ray import Lifecycle, LocalRay
from fastapi.testclient import TestClient

import imagesearch.cluster as cluster_package
from assets.catalog import image_catalog
from assets.embeddings import image_embeddings
from assets.index import search_index
from dagster_project.resources import WorkspaceResource
from imagesearch.common.executor import InProcess
from imagesearch.common.images import DEFAULT_LIMITS
from imagesearch.embeddings.adhoc import embed_folder
from imagesearch.embeddings.backfill import backfill
from imagesearch.embeddings.store import read_model_embeddings
from imagesearch.index.build import build_tuned_index, train_empty
from imagesearch.index.choose import IndexChoice
from imagesearch.index.pieces import merge_pieces
from imagesearch.index.store import load_index
from imagesearch.serving.app import create_app
from imagesearch.serving.service import SearchService
from imagesearch.settings import ClusterSettings, Settings
from tests.conftest import make_training_folder, noise_image

ray = pytest.importorskip("ray")
LOOPBACK = "http://127.0.0.1"
ON_RAY = ClusterSettings(engine="ray", embed_actors=2)


@pytest.fixture(scope="module")
def ray_cluster():
    with cluster_package.local_cluster(nodes=2, cpus_per_node=2, object_store_mb=150) as cluster:
        yield cluster


@pytest.fixture
def executor(ray_cluster, monkeypatch):
    """A driver connected to the shared cluster (a Dagster resource may have disconnected it)."""
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    cluster_package.connect(ON_RAY)
    return cluster_package.RayExecutor(ON_RAY)


def nodes_of(workers) -> set[str]:
    return {label.split(":")[0] for label in workers}


def catalog_of(folder: Path) -> pd.DataFrame:
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    return pd.DataFrame({"id": [hashlib.sha256(p.encode()).hexdigest()[:32] for p in paths], "path": paths})


def tower_pids() -> list[int]:
    """Image-tower actor processes (Ray titles each actor process 'ray::<class>')."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"ImageTower" in cmdline.read_bytes() and b"ray::" in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def test_the_cluster_has_two_live_nodes(executor):
    alive = [node for node in ray.nodes() if node["Alive"]]
    assert len(alive) == 2 and {node["NodeManagerAddress"] for node in alive} == {"127.0.0.1"}


def test_backfill_on_ray_equals_in_process_and_runs_on_both_nodes(executor, zeroshot_encoder, tmp_path):
    catalog = catalog_of(make_training_folder(tmp_path / "images"))
    options = {"batch_size": 2, "limits": DEFAULT_LIMITS, "progress": False}
    local = backfill(zeroshot_encoder, catalog, tmp_path / "local", executor=InProcess(1), **options)
    on_ray = backfill(zeroshot_encoder, catalog, tmp_path / "ray", executor=executor, **options)
    assert on_ray.embedded == local.embedded == len(catalog) and not on_ray.failed
    assert len(nodes_of(on_ray.workers)) == 2, on_ray.workers
    expected, _ = read_model_embeddings(tmp_path / "local", catalog["id"])
    got, missing = read_model_embeddings(tmp_path / "ray", catalog["id"])
    assert missing.empty and np.allclose(got, expected, atol=1e-3)

    extra = tmp_path / "images" / "new"
    extra.mkdir()
    for seed in range(3):
        noise_image(900 + seed).save(extra / f"new_{seed}.png")
    (extra / "broken.png").write_bytes(b"not an image")
    again = backfill(
        zeroshot_encoder, catalog_of(tmp_path / "images"), tmp_path / "ray", executor=executor, **options
    )
    assert (again.embedded, again.reused, len(again.failed)) == (3, len(catalog), 1)


def test_a_killed_image_tower_actor_loses_nothing(executor, zeroshot_encoder, tmp_path):
    """kill -9 of an image-tower actor mid-run: Ray restarts it and retries its batches, or the next run
    resumes from the finished shards; either way every image ends up embedded exactly once."""
    catalog = catalog_of(make_training_folder(tmp_path / "images"))
    killed: list[int] = []

    def kill_one_tower() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            pids = tower_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_tower)
    killer.start()
    options = {"batch_size": 1, "limits": DEFAULT_LIMITS, "progress": False, "executor": executor}
    try:
        first = backfill(zeroshot_encoder, catalog, tmp_path / "ray", **options)
        resumed = None
    except Exception:  # the run may fail; the finished shards stay and the next run resumes
        first, resumed = None, backfill(zeroshot_encoder, catalog, tmp_path / "ray", **options)
    killer.join()
    assert killed, "no image-tower actor was found to kill"
    done = first or resumed
    assert not done.failed
    vectors, missing = read_model_embeddings(tmp_path / "ray", catalog["id"])
    assert missing.empty and len(vectors) == len(catalog)
    expected = zeroshot_encoder.encode_images([Path(p) for p in catalog["path"]])
    assert np.allclose(vectors, expected, atol=1e-3)


def test_index_pieces_filled_on_ray_and_merged_equal_a_sequential_build(executor):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    choice = IndexChoice("ivf", "IVF32,PQ8x4fs", 12, "test")
    trained = train_empty(vectors, choice, train_sample=2000)
    sequential = train_empty(vectors, choice, train_sample=2000)
    sequential.add(vectors)
    bounds = [0, 700, 1900, 3100, 4000]
    merged = merge_pieces(executor.fill_pieces(trained, vectors, bounds), bounds[:-1])
    assert len(nodes_of(executor.piece_workers)) == 2, executor.piece_workers
    import faiss

    params = faiss.SearchParametersIVF(nprobe=8)
    expected = sequential.search(vectors[:50], 10, params=params)
    got = merged.search(vectors[:50], 10, params=params)
    assert (got[1] == expected[1]).all() and np.allclose(got[0], expected[0])


def test_sharded_serving_answers_what_the_whole_index_answers(executor, zeroshot_encoder, tmp_path):
    folder = make_training_folder(tmp_path / "images")
    frame, vectors, _ = embed_folder(zeroshot_encoder, folder, batch_size=8, limits=Settings().catalog)
    settings = Settings(home=tmp_path / "ws", cluster=ON_RAY.model_copy(update={"index_shards": 2}))
    bounds = [0, len(frame) // 2, len(frame)]
    manifest = build_tuned_index(
        vectors, frame, tmp_path / "index", model="v0", config=settings.index,
        executor=executor, bounds=bounds, shards=2,
    )  # fmt: skip
    assert len(manifest.extra["shards"]) == 2

    def answers(loaded) -> list[list[str]]:
        service = SearchService(zeroshot_encoder, loaded, loaded.ids.set_index("id")["path"], settings)
        with TestClient(create_app(settings, service=service), base_url=LOOPBACK) as client:
            bodies = [
                client.post("/search", json={"text": text, "k": 8, "diversity": 1.0}).json()
                for text in ("a noisy cat", "tools", "food on a plate")
            ]
        return [[r["id"] for r in body["results"]] for body in bodies]

    sharded = load_index(tmp_path / "index", executor)
    searchers = sharded.sharded.workers()  # SPREAD is best effort: distinct actor processes, always
    assert sharded.index is None and len(set(searchers)) == 2
    assert all(int(label.split(":")[1]) != os.getpid() for label in searchers)
    assert answers(sharded) == answers(load_index(tmp_path / "index"))
    sharded.sharded.close()


@pytest.mark.usefixtures("dvc_available")
def test_dagster_assets_run_on_the_cluster_through_the_ray_resource(
    executor, ray_cluster, tiny_folder, saved_encoder, tmp_path
):
    workspace = WorkspaceResource(home=str(tmp_path / "ws"), image_dirs=[str(tiny_folder)])
    on_cluster = LocalRay(
        lifecycle=Lifecycle(cleanup="never"), ray_init_options={"ignore_reinit_error": True}
    )
    model = {"config": {"model": str(saved_encoder)}}
    result = dg.materialize(
        [image_catalog, image_embeddings, search_index],
        resources={"workspace": workspace, "ray_cluster": on_cluster},
        run_config={"ops": {"image_embeddings": model, "search_index": model}},
        tags={"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "f"},
    )
    assert result.success
    embedded = result.asset_materializations_for_node("image_embeddings")[-1].metadata
    assert embedded["executor"].value == "ray" and embedded["embedded"].value == 6
    assert len(nodes_of(embedded["workers"].value)) >= 1
    indexed = result.asset_materializations_for_node("search_index")[-1].metadata
    assert indexed["executor"].value == "ray" and indexed["vectors"].value == 6
