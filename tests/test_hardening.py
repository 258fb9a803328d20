"""Hostile input against the service and the decode path: each test names the defect it pins (a
review's list: decode bombs, deep pages, weak tokens, reload paths, body sizes, field limits, hostile
JSON, symlinked images, Host / Origin checks, pickled models)."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from imagesearch.catalog.step import CATALOG_STAGE, catalog_step
from imagesearch.common.io import folder_atomic, remove_dead_leftovers
from imagesearch.common.versioning import VersioningError
from imagesearch.common.workspace import StageBusy, init_workspace, stage_lock
from imagesearch.feedback.clicklog import ClickLog
from imagesearch.index.folder import build_folder_index
from imagesearch.index.step import UnsoundIndex, index_step, refuse_unsound_index
from imagesearch.index.store import LoadedIndex, load_index, save_index_atomic
from imagesearch.models.registry import load_encoder, log_encoder
from imagesearch.serving.app import create_app
from imagesearch.serving.service import SearchService
from imagesearch.serving.types import PageRequest, Query
from imagesearch.settings import ModelSettings, ServiceSettings, Settings
from tests.conftest import noise_image

LOOPBACK = "http://127.0.0.1"


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, zeroshot_encoder) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hardening")
    images = root / "images"
    images.mkdir()
    for seed in range(4):
        noise_image(seed, (96, 64)).save(images / f"noise{seed}.png")
    build_folder_index(
        zeroshot_encoder, images, root / "index", model="v0", settings=Settings(home=root / "ws")
    )
    return root, images


def service_client(small_index, zeroshot_encoder, tmp_path, **service) -> TestClient:
    root, _ = small_index
    settings = Settings(home=tmp_path / "ws", service=ServiceSettings(**service))
    loaded = load_index(root / "index")
    search = SearchService(zeroshot_encoder, loaded, loaded.ids.set_index("id")["path"], settings)
    return TestClient(create_app(settings, service=search), base_url=LOOPBACK)


@pytest.fixture
def client(small_index, zeroshot_encoder, tmp_path):
    with service_client(small_index, zeroshot_encoder, tmp_path, max_body_bytes=2_000_000) as test_client:
        yield test_client


# --- 1: small uploads that decode to huge images -------------------------------------------------
DECODE_PEAK = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from imagesearch.common.images import DecodeLimits, open_rgb
    data = Path(sys.argv[1]).read_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    image = open_rgb(data, DecodeLimits(max_image_pixels=40_000_000), reduce_to=448).rgb
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(image.size[0], image.size[1], (peak - before) // 1024)
    """
)


@pytest.mark.parametrize("mode", ["I;16", "P"])
def test_a_small_upload_of_a_huge_image_decodes_in_bounded_memory(tmp_path, mode):
    """Defect 1: a ~100 KB PNG of 6000x6000 16-bit or palette pixels (36 M pixels, under the pixel
    limit) must not cost its full-size float64 / RGBA copies: the query path reduces while decoding."""
    image = Image.new(mode, (6000, 6000))
    if mode == "P":
        image.putpalette([0, 0, 0, 255, 255, 255] * 128)
        image.info["transparency"] = 0
    path = tmp_path / "giant.png"
    image.save(path)
    assert path.stat().st_size < 1_000_000
    run = subprocess.run(
        [sys.executable, "-c", DECODE_PEAK, str(path)], capture_output=True, text=True, check=True
    )
    width, height, peak_mb = map(int, run.stdout.split())
    assert max(width, height) <= 1500  # reduced before conversion
    assert peak_mb < 150, f"decoding grew the process by {peak_mb} MB"


def test_an_upload_declaring_too_many_pixels_is_refused_before_decoding(client, tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (8000, 8000)).save(path)  # 64 M pixels in a few KB
    response = client.post("/search", files={"image": ("bomb.png", path.read_bytes(), "image/png")})
    assert response.status_code == 422 and "decompression_bomb" in response.json()["detail"]


# --- 2: one deep page must not make the whole batch deep ----------------------------------------
def test_queries_are_searched_at_their_own_depth(small_index, zeroshot_encoder, tmp_path, monkeypatch):
    root, _ = small_index
    settings = Settings(home=tmp_path / "ws", service=ServiceSettings(candidates=1))
    loaded = load_index(root / "index")
    service = SearchService(zeroshot_encoder, loaded, loaded.ids.set_index("id")["path"], settings)
    depths = []
    search = LoadedIndex.search

    def recorded(self, queries, k, mask=None):
        depths.append((len(queries), k))
        return search(self, queries, k, mask)

    monkeypatch.setattr(LoadedIndex, "search", recorded)
    vector = loaded.vectors[0].astype(np.float32)
    encoded = service.encode([Query.of(vector=vector / np.linalg.norm(vector))] * 3, {})
    pages = [PageRequest(1, 0, 1.0, False), PageRequest(1, 1, 1.0, False), PageRequest(1, 0, 1.0, False)]
    answers = service.search_many(encoded, pages, {})
    assert sorted(depths) == [(1, 4), (2, 2)]  # the shallow two together, the deep one alone
    assert [len(a.results) for a in answers] == [1, 1, 1]
    service.close()


# --- 3: weak admin tokens ------------------------------------------------------------------------
@pytest.mark.parametrize("token", ["", "   ", "short"])
def test_an_empty_or_short_admin_token_is_refused_at_start_up(token, monkeypatch):
    monkeypatch.setenv("IMAGESEARCH_SERVICE__ADMIN_TOKEN", token)
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings()


# --- 4: reloads read only index folders of this service ------------------------------------------
def test_a_reload_outside_the_index_folders_is_refused(small_index, tmp_path):
    root, _ = small_index
    settings = Settings(home=tmp_path / "ws", service=ServiceSettings(admin_token="x" * 16))
    auth = {"Authorization": "Bearer " + "x" * 16}
    with TestClient(create_app(settings, index_dir=root / "index"), base_url=LOOPBACK) as admin:
        for elsewhere in ["/etc", str(tmp_path), str(root / "index" / ".." / ".." / "..")]:
            response = admin.post("/admin/reload", json={"index_dir": elsewhere}, headers=auth)
            assert response.status_code == 403, elsewhere
            assert "only index folders" in response.json()["detail"]


# --- 5: body size before reading ------------------------------------------------------------------
def test_a_body_over_the_limit_is_refused_from_its_length_and_while_it_streams(client):
    response = client.post("/search", content=b"{" * 3_000_000, headers={"content-type": "application/json"})
    assert response.status_code == 413

    def chunks():
        for _ in range(40):
            yield b" " * 100_000

    streamed = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "larger than 2000000" in streamed.json()["detail"]


# --- 6 and 7: every field validated, hostile JSON answered with a 4xx ------------------------------
@pytest.mark.parametrize(
    ("route", "kwargs", "status"),
    [
        ("/search", {"data": {"text": "x" * 5000}, "files": {"image": ("q.png", b"png", "image/png")}}, 422),
        ("/search", {"data": {"text": "cat"}, "files": {"image": ("q.png", b"png", "image/png")}}, 422),
        ("/knn-service", {"json": {"text": "x" * 5000}}, 422),
        ("/knn-service", {"json": {"embedding_input": [0.0] * 70_000}}, 422),
        ("/search", {"json": {"embedding": [0.0] * 70_000}}, 422),
        ("/search", {"json": {"text": "cat", "offset": 10**30}}, 422),
        ("/events", {"json": {"query_id": "q", "rank": 2**64}}, 422),
        (
            "/search",
            {"content": b"[" * 50_000 + b"]" * 50_000, "headers": {"content-type": "application/json"}},
            400,
        ),
        (
            "/events",
            {"content": b"[" * 50_000 + b"]" * 50_000, "headers": {"content-type": "application/json"}},
            400,
        ),
        ("/knn-service", {"content": b"[" * 50_000 + b"]" * 50_000}, 422),
    ],
)
def test_hostile_fields_and_bodies_get_a_4xx(client, route, kwargs, status):
    response = client.post(route, **kwargs)
    assert response.status_code == status, response.text[:300]


# --- 8: served files must still be inside the image roots ----------------------------------------
def test_an_image_replaced_by_a_symlink_elsewhere_is_not_served(zeroshot_encoder, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    noise_image(7).save(images / "a.png")
    noise_image(8).save(images / "b.png")
    build_folder_index(
        zeroshot_encoder, images, tmp_path / "index", model="v0", settings=Settings(home=tmp_path)
    )
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the network")
    settings = Settings(home=tmp_path / "ws")
    loaded = load_index(tmp_path / "index")
    service = SearchService(zeroshot_encoder, loaded, loaded.ids.set_index("id")["path"], settings)
    ids = dict(zip(loaded.ids["path"].map(lambda p: Path(p).name), loaded.ids["id"], strict=True))
    with TestClient(create_app(settings, service=service), base_url=LOOPBACK) as test_client:
        assert test_client.get(f"/images/{ids['a.png']}").status_code == 200
        (images / "a.png").unlink()
        (images / "a.png").symlink_to(secret)
        assert test_client.get(f"/images/{ids['a.png']}").status_code == 404


def test_a_folder_index_skips_symlinks_out_of_the_folder(zeroshot_encoder, tmp_path):
    images, outside = tmp_path / "images", tmp_path / "outside"
    images.mkdir()
    outside.mkdir()
    noise_image(1).save(images / "inside.png")
    noise_image(2).save(outside / "elsewhere.png")
    (images / "link.png").symlink_to(outside / "elsewhere.png")
    manifest = build_folder_index(
        zeroshot_encoder, images, tmp_path / "index", model="v0", settings=Settings(home=tmp_path)
    )
    assert manifest.count == 1 and manifest.extra["rejected"] == {"outside_source": 1}


# --- 9: Host allow-list and cross-site posts -----------------------------------------------------
def test_a_foreign_host_header_and_cross_site_posts_are_refused(client):
    assert client.get("/health").status_code == 200
    assert client.get("/health", headers={"host": "attacker.example"}).status_code == 400
    cross_site = client.post("/search", json={"text": "cat"}, headers={"origin": "http://attacker.example"})
    assert cross_site.status_code == 403
    same_site = client.post("/search", json={"text": "cat"}, headers={"origin": LOOPBACK})
    assert same_site.status_code == 200
    form_post = client.post(
        "/knn-service", content=json.dumps({"text": "cat"}), headers={"content-type": "text/plain"}
    )
    assert form_post.status_code == 415


# --- 11: publishing a folder is one atomic exchange; a kill at any moment leaves one to serve ------
PUBLISHER = textwrap.dedent(
    """
    import hashlib, os, sys
    from pathlib import Path
    from imagesearch.common.io import folder_atomic
    target = Path(sys.argv[1])
    for round in range(10_000):
        with folder_atomic(target) as staging:
            payload = os.urandom(1 << 20)
            (staging / "vectors.bin").write_bytes(payload)
            (staging / "manifest.json").write_text(hashlib.sha256(payload).hexdigest())
    """
)


def complete(folder: Path) -> bool:
    manifest = (folder / "manifest.json").read_text()
    return hashlib.sha256((folder / "vectors.bin").read_bytes()).hexdigest() == manifest


def test_a_writer_killed_at_random_moments_always_leaves_a_complete_folder(tmp_path):
    target = tmp_path / "index"
    rng = np.random.default_rng(0)
    for kill in range(12):
        writer = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(target)])
        time.sleep(1.5 if kill == 0 else rng.uniform(0.2, 0.8))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        if target.exists():  # the very first publication may not have happened yet
            assert complete(target), f"kill {kill} left a half-written folder"
    assert target.exists()
    leftovers = remove_dead_leftovers(target)
    assert [p.name for p in tmp_path.iterdir()] == ["index"], leftovers
    assert complete(target)


def test_a_retired_version_is_restored_when_a_kill_left_no_folder(tmp_path):
    target = tmp_path / "index"
    retired = tmp_path / ".index.retired-999999999"
    retired.mkdir()
    (retired / "manifest.json").write_text("{}")
    (tmp_path / ".index.staging-999999999").mkdir()
    with folder_atomic(target) as staging:
        assert (target / "manifest.json").exists()  # restored before the new version is written
        (staging / "manifest.json").write_text('{"new": true}')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    assert json.loads((target / "manifest.json").read_text()) == {"new": True}


# --- 15: a locked click log never fails the search and loses no row ------------------------------
def test_a_locked_click_log_spools_the_query_and_replays_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'clicks.sqlite'}"
    log = ClickLog(url, busy_timeout_s=0.05)
    log.log_query([("a", 0.9)], model_version="v0", query_text="first")
    blocker = sqlite3.connect(tmp_path / "clicks.sqlite")
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        locked = log.log_query([("b", 0.8)], model_version="v0", query_text="while locked")
    finally:
        blocker.rollback()
        blocker.close()
    assert log.spool.exists() and locked in log.spool.read_text()
    log.log_query([("c", 0.7)], model_version="v0", query_text="after")
    tables = log.read()
    assert sorted(tables.queries["query_text"]) == ["after", "first", "while locked"]
    assert len(tables.impressions) == 3 and not log.spool.exists()


def test_the_click_logs_warm_up_writes_nothing_and_a_locked_log_does_not_stop_it(tmp_path):
    """The service warms its click log at start-up (a rolled-back write); a log that cannot be
    written then must not stop the service from starting."""
    url = f"sqlite:///{tmp_path / 'clicks.sqlite'}"
    log = ClickLog(url, busy_timeout_s=0.05, background=True)
    blocker = sqlite3.connect(tmp_path / "clicks.sqlite")
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        log.warm_up()  # locked: no error
    finally:
        blocker.rollback()
        blocker.close()
    log.warm_up()
    assert log.count_queries() == 0 and log.read().impressions.empty
    log.log_query([("a", 0.9)], model_version="v0", query_text="after the warm-up")
    log.flush()
    assert list(log.read().queries["query_text"]) == ["after the warm-up"]
    log.close()


# --- 16: a failed swap is retried at the next poll ------------------------------------------------
def test_a_build_whose_model_fails_to_load_is_swapped_in_once_it_loads(
    small_index, zeroshot_encoder, saved_encoder, tmp_path
):
    _, images = small_index
    settings = Settings(home=tmp_path / "ws", service=ServiceSettings(reload_poll_seconds=0.2))
    live, later_model = tmp_path / "live", tmp_path / "later-model"
    build_folder_index(zeroshot_encoder, images, live, model=str(saved_encoder), settings=settings)
    more = tmp_path / "more"
    shutil.copytree(images, more)
    noise_image(99, (80, 80)).save(more / "extra.png")
    build_folder_index(zeroshot_encoder, more, tmp_path / "next", model=str(later_model), settings=settings)
    with TestClient(create_app(settings, index_dir=live), base_url=LOOPBACK) as client:
        first = client.get("/health").json()["vectors"]
        shutil.rmtree(live)
        (tmp_path / "next").rename(live)
        deadline = time.time() + 60
        while client.app.state.swapper.last["status"] != "failed" and time.time() < deadline:
            time.sleep(0.1)
        assert client.app.state.swapper.last["status"] == "failed"  # the model is not there yet
        shutil.copytree(saved_encoder, later_model)
        while client.get("/health").json()["vectors"] == first and time.time() < deadline:
            time.sleep(0.2)
        assert client.get("/health").json()["vectors"] == first + 1


# --- 13 and 14: one writer per stage; a killed writer leaves nothing locked ------------------------
HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from imagesearch.common.workspace import stage_lock
    from imagesearch.settings import Settings
    with stage_lock(Settings(home=sys.argv[1]), "index"):
        print("holding", flush=True)
        time.sleep(60)
    """
)


def test_a_second_writer_of_a_stage_fails_naming_the_first_and_a_kill_frees_it(workspace_settings):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(workspace_settings.home)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "holding"
    with pytest.raises(StageBusy, match=rf"another index run is writing this workspace \(pid {holder.pid}"):
        index_step(workspace_settings, model="v0", record=False)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with stage_lock(workspace_settings, "index"):  # released with the killed process
        pass


def test_a_git_index_lock_left_by_a_killed_commit_does_not_block_recording(workspace_settings):
    repo = init_workspace(workspace_settings)
    (workspace_settings.home / ".git" / "index.lock").write_text("")
    catalog_step(workspace_settings, progress=False)  # records: git add + commit
    assert not (workspace_settings.home / ".git" / "index.lock").exists()
    assert repo.history(CATALOG_STAGE)


# --- 12: an index that fails its checks is never published ----------------------------------------
def test_an_unsound_new_index_is_refused_before_it_replaces_the_served_one(small_index, tmp_path):
    root, _ = small_index
    served = tmp_path / "served"
    shutil.copytree(root / "index", served)
    before = (served / "manifest.json").read_text()
    loaded = load_index(served)
    catalog_ids = set(loaded.ids["id"])
    shrunk = loaded.ids.iloc[:-1].reset_index(drop=True)
    refuse = partial(refuse_unsound_index, catalog_ids=catalog_ids, floor=0.8)
    with pytest.raises(UnsoundIndex, match="3 vectors for 4 catalog images"):
        index = faiss.IndexFlatIP(loaded.vectors.shape[1])
        index.add(np.asarray(loaded.vectors[:-1], dtype=np.float32))
        save_index_atomic(served, index, loaded.manifest, shrunk, loaded.vectors[:-1], check=refuse)
    assert (served / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]  # no staging left behind
    save_index_atomic(served, loaded.index, loaded.manifest, loaded.ids, loaded.vectors, check=refuse)


# --- 10: the registry's pickle is never what loads the model ---------------------------------------
def test_a_registered_encoder_loads_without_unpickling_its_pyfunc(zeroshot_encoder, tmp_path):
    # the float text graph, so that the vectors can be held to torch's up to rounding
    settings = Settings(home=tmp_path / "ws", model=ModelSettings(text_precision="float32"))
    record = log_encoder(zeroshot_encoder, settings, run_name="pickle-free")
    pickles = list(settings.mlflow_artifacts_dir.rglob("python_model.pkl"))
    assert pickles
    for pickle in pickles:  # what an attacker with write access to the store would plant
        pickle.write_bytes(b"cos\nsystem\n(S'echo pwned > /tmp/pwned'\ntR.")
    encoder = load_encoder(record.uri, settings)
    np.testing.assert_allclose(  # ONNX Runtime vs torch: float rounding only
        encoder.encode_texts(["a cat"]), zeroshot_encoder.encode_texts(["a cat"]), atol=1e-5
    )


# --- 13: the repository lock does not wait forever ------------------------------------------------
def test_the_repository_lock_times_out_with_a_reason(workspace_settings):
    repo = init_workspace(workspace_settings)
    waiting = pytest.raises(VersioningError, match="stayed locked by another run")
    with repo._lock(), waiting, repo._lock(timeout_s=0.5):
        pass


# --- found by the kill matrix: a killed first MLflow migration must not leave a broken store ------
def test_the_mlflow_store_appears_only_once_fully_migrated(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from imagesearch.models import registry

    settings = Settings(home=tmp_path / "ws")
    migrate = MlflowClient.search_experiments

    def killed_half_way(self, *args, **kwargs):
        raise KeyboardInterrupt  # as if the process died inside the migrations

    monkeypatch.setattr(MlflowClient, "search_experiments", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        registry.connect(settings)
    assert not (settings.mlflow_dir / "mlflow.db").exists()
    monkeypatch.setattr(MlflowClient, "search_experiments", migrate)
    assert registry.connect(settings).get_experiment_by_name(registry.EXPERIMENT) is not None
