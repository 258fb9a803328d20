"""Serving: the HTTP service through TestClient on a real index of tiny images (v0 encoder, real click
log), the query worker, and the pure re-rank functions."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imagesearch.feedback.clicklog import ClickLog
from imagesearch.index.delta import write_delta
from imagesearch.index.folder import build_folder_index
from imagesearch.index.store import load_index
from imagesearch.serving import app as app_module
from imagesearch.serving import warm_up
from imagesearch.serving.app import create_app
from imagesearch.serving.rerank import collapse_near_duplicates, mmr
from imagesearch.serving.service import SearchService
from imagesearch.serving.types import Answer, PageRequest, Query, Result
from imagesearch.serving.warm_up import WARM_UP_HEADER, WARM_UP_SEARCHES
from imagesearch.serving.worker import QueryWorker
from imagesearch.settings import PROJECT_ROOT, ServiceSettings, Settings
from tests.conftest import served_on_loopback

# --- serving --------------------------------------------------------------------------------
# The browser test's screenshot stays here for people to look at (git-ignored).
PROJECT_SCREENSHOT_DIR = PROJECT_ROOT / "test-artifacts"
ADMIN_TOKEN = "a-test-token-of-32-characters..."
LOOPBACK = "http://127.0.0.1"  # the Host the service accepts by default (not TestClient's "testserver")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon", "page", "coins", "horse")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, zeroshot_encoder):
    """An index over real photos plus an exact copy of one (a near-duplicate for the collapse)."""
    from skimage import data

    root = tmp_path_factory.mktemp("service")
    images = root / "images"
    (images / "photos").mkdir(parents=True)
    for name in PHOTOS:
        pixels = getattr(data, name)()
        Image.fromarray(pixels if pixels.dtype == "uint8" else (pixels * 255).astype("uint8")).save(
            images / "photos" / f"{name}.png"
        )
    Image.open(images / "photos" / "coffee.png").save(images / "photos" / "coffee_copy.png", compress_level=1)
    settings = Settings(home=root / "ws")
    build_folder_index(zeroshot_encoder, images, root / "index", model="v0", settings=settings)
    return root, images


@pytest.fixture
def client(indexed, zeroshot_encoder, tmp_path):
    root, _ = indexed
    settings = Settings(
        home=tmp_path / "ws",
        service=ServiceSettings(max_upload_bytes=2_000_000, max_k=10),
    )
    loaded = load_index(root / "index")
    service = SearchService(zeroshot_encoder, loaded, loaded.ids.set_index("id")["path"], settings)
    with TestClient(create_app(settings, service=service), base_url=LOOPBACK) as test_client:
        test_client.settings = settings
        yield test_client


def test_text_search_returns_ranked_results_with_model_version_and_timings(client):
    response = client.post("/search", json={"text": "a cup of coffee", "k": 5, "diversity": 1.0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "v0" and len(body["results"]) == 5
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert {"encode", "ann", "rerank", "total"} <= set(body["timings_ms"])


def test_image_upload_finds_itself_first_and_dedup_collapses_its_copy(client, indexed):
    upload = (indexed[1] / "photos" / "coffee.png").read_bytes()
    files = {"image": ("q.png", upload, "image/png")}
    with_dedup = client.post("/search", files=files, data={"k": "3", "diversity": "1.0"}).json()
    without = client.post(
        "/search", files=files, data={"k": "3", "diversity": "1.0", "dedup": "false"}
    ).json()
    assert without["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert without["results"][1]["score"] == pytest.approx(1.0, abs=1e-3)  # the copy
    copy = without["results"][1]["id"]
    assert with_dedup["results"][0]["id"] == without["results"][0]["id"]
    assert copy not in {r["id"] for r in with_dedup["results"]}


def test_more_like_this_and_raw_embedding_and_paging(client):
    first = client.post("/search", json={"text": "noise", "k": 4, "diversity": 1.0}).json()["results"]
    image_id = first[0]["id"]
    similar = client.post("/search", json={"image_id": image_id, "k": 2, "dedup": False}).json()
    assert similar["results"][0]["id"] == image_id
    second_page = client.post("/search", json={"text": "noise", "k": 2, "offset": 2, "diversity": 1.0}).json()
    assert [r["id"] for r in second_page["results"]] == [r["id"] for r in first[2:4]]
    assert [r["rank"] for r in second_page["results"]] == [3, 4]
    wrong = client.post("/search", json={"embedding": [0.1, 0.2], "k": 2})
    assert wrong.status_code == 422 and "values" in wrong.json()["detail"]


def test_images_are_served_by_catalog_id_only(client):
    result = client.post("/search", json={"text": "noise", "k": 1}).json()["results"][0]
    original = client.get(result["image_url"])
    assert original.status_code == 200 and original.headers["content-type"] == "image/png"
    thumbnail = client.get(result["thumbnail_url"])
    assert Image.open(io.BytesIO(thumbnail.content)).size[0] <= 256
    assert client.get("/images/does-not-exist").status_code == 404
    assert client.get("/images/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_thumbnails_are_made_once_and_remade_when_the_source_changes(client, indexed):
    result = client.post("/search", json={"text": "noise", "k": 1}).json()["results"][0]
    first = client.get(result["thumbnail_url"])
    cached = client.settings.thumbnails_dir / f"{result['id']}-256.png"
    assert first.status_code == 200 and cached.read_bytes() == first.content
    made_at = cached.stat().st_mtime_ns
    assert client.get(result["thumbnail_url"]).content == first.content
    assert cached.stat().st_mtime_ns == made_at  # served from the cache, not made again
    source = next(
        p
        for p in (indexed[1] / "photos").iterdir()
        if client.app.state.service.path_of(result["id"]) == p.resolve()
    )
    later = made_at + 5_000_000_000
    os.utime(source, ns=(later, later))
    client.get(result["thumbnail_url"])
    assert cached.stat().st_mtime_ns != made_at


def test_repeated_texts_are_encoded_once_per_model(indexed, zeroshot_encoder, tmp_path):
    root, _ = indexed
    settings = Settings(home=tmp_path / "ws", service=ServiceSettings(text_cache_size=2))
    loaded = load_index(root / "index")
    service = SearchService(zeroshot_encoder, loaded, loaded.ids.set_index("id")["path"], settings)
    encoded: list[list[str]] = []  # what reaches the real encoder

    def encode_texts(texts: list[str]) -> np.ndarray:
        encoded.append(list(texts))
        return zeroshot_encoder.encode_texts(texts)

    service.encoder = copy.copy(zeroshot_encoder)
    service.encoder.encode_texts = encode_texts
    queries = [Query.of(text=t) for t in ("a cat", "a dog", "a cat")]
    first = service.encode(queries, {})
    assert encoded == [["a cat", "a dog"]]
    np.testing.assert_array_equal(first[0].vector, first[2].vector)
    np.testing.assert_array_equal(service.encode([Query.of(text="a dog")], {})[0].vector, first[1].vector)
    service.encode(
        [Query.of(text="a cow"), Query.of(text="a hen"), Query.of(text="a pig")], {}
    )  # more than fit
    service.encode([Query.of(text="a cat")], {})
    assert encoded[1:] == [["a cow", "a hen", "a pig"], ["a cat"]]  # evicted: encoded again


def test_clicks_are_logged_against_the_impressions(client):
    searched = client.post("/search", json={"text": "noise", "k": 3}).json()
    clicked = client.post("/events", json={"type": "click", "query_id": searched["query_id"], "rank": 2})
    assert clicked.status_code == 201
    assert clicked.json()["image_id"] == searched["results"][1]["id"]
    assert client.post("/events", json={"query_id": searched["query_id"], "rank": 9}).status_code == 404
    tables = ClickLog(client.settings.effective_click_log_url).read()
    assert len(tables.impressions) == 3 and tables.clicks["rank"].tolist() == [2]
    assert tables.queries["model_version"].tolist() == ["v0"]


def test_the_background_click_log_writes_every_query_with_a_bounded_queue(tmp_path):
    url = f"sqlite:///{tmp_path / 'clicks.sqlite'}"
    log = ClickLog(url, background=True, max_pending=5)  # a full queue is written inline
    shown = [("a", 0.9), ("b", 0.8)]
    ids = [log.log_query(shown, model_version="v") for _ in range(200)]
    just_shown = log.log_query([("c", 0.5)], model_version="v")
    assert log.log_click(just_shown, 1) == "c"  # a click waits for the queue: never an unknown query
    log.close()
    tables = ClickLog(url).read()
    assert set(tables.queries["query_id"]) == {*ids, just_shown} and len(tables.impressions) == 401


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        ({"json": {"text": "   "}}, 422, "empty"),
        ({"json": {"text": "x" * 1001}}, 422, "limit"),
        ({"json": {"text": "cat", "k": 0}}, 422, "k"),
        ({"json": {"text": "cat", "k": 11}}, 422, "at most 10"),
        ({"json": {"text": "cat", "image_id": "abc"}}, 422, "exactly one"),
        ({"json": {}}, 422, "exactly one"),
        ({"json": {"image_id": "unknown"}}, 422, "no indexed image"),
        ({"content": b"not json", "headers": {"content-type": "application/json"}}, 422, "JSON"),
        ({"files": {"image": ("x.png", b"not an image", "image/png")}}, 422, "not a usable image"),
        (
            {"files": {"image": ("x.png", b"\x89PNG\r\n\x1a\n" + b"0" * 2_100_000, "image/png")}},
            413,
            "larger",
        ),
        ({"files": {"other": ("x.png", b"abc", "image/png")}}, 422, "'image'"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(client, request_kwargs, status, message):
    response = client.post("/search", **request_kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_a_query_the_worker_cannot_answer_in_time_gets_503(indexed, zeroshot_encoder, tmp_path, monkeypatch):
    root, _ = indexed
    settings = Settings(home=tmp_path / "ws", service=ServiceSettings(answer_timeout_s=0.2))
    loaded = load_index(root / "index")
    service = SearchService(zeroshot_encoder, loaded, loaded.ids.set_index("id")["path"], settings)
    encode = service.encode
    monkeypatch.setattr(service, "encode", lambda *args: time.sleep(1.0) or encode(*args))  # a busy worker
    with TestClient(create_app(settings, service=service), base_url=LOOPBACK) as overloaded:
        response = overloaded.post("/search", json={"text": "a cup of coffee"})
    assert response.status_code == 503 and "overloaded" in response.json()["detail"]


def test_health_metrics_and_openapi(client):
    health = client.get("/health").json()
    assert health["vectors"] == len(PHOTOS) + 1
    assert health["runtime"] == "torch:cpu"  # the fixture's encoder is not a registered one
    client.post("/search", json={"text": ""})
    client.post("/search", json={"text": "a cup of coffee"})
    client.get("/health", headers={"host": "rebound.example"})  # refused before any route matches
    metrics = client.get("/metrics").text
    assert 'imagesearch_requests_total{route="/search",status="422"}' in metrics
    assert 'imagesearch_requests_total{route="/search",status="200"}' in metrics
    assert 'imagesearch_requests_total{route="unmatched",status="400"}' in metrics
    assert "imagesearch_request_seconds_bucket" in metrics
    assert "/search" in client.get("/openapi.json").json()["paths"]


def test_the_routes_are_warmed_at_start_up_and_the_warm_up_leaves_no_trace(
    indexed, zeroshot_encoder, tmp_path, monkeypatch, caplog
):
    """Searches through the whole ASGI stack before the first client's, every one answered; none
    logged, counted or cached, and no later request can pass for one."""
    root, _ = indexed
    settings = Settings(home=tmp_path / "ws")
    loaded = load_index(root / "index")
    service = SearchService(zeroshot_encoder, loaded, loaded.ids.set_index("id")["path"], settings)
    warm_ups = []
    recognise = app_module.is_warm_up
    monkeypatch.setattr(
        app_module, "is_warm_up", lambda request: warm_ups.append(recognise(request)) or warm_ups[-1]
    )
    app = create_app(settings, service=service)
    with caplog.at_level("WARNING", logger=warm_up.__name__), TestClient(app, base_url=LOOPBACK) as client:
        assert warm_ups == [True] * (WARM_UP_SEARCHES + 1)  # the text searches and the image one
        assert "warm-up did not complete" not in caplog.text
        assert 'route="/search"' not in client.get("/metrics").text
        assert len(service.text_vectors) == 0
        guessed = client.post("/search", json={"text": "noise", "k": 3}, headers={WARM_UP_HEADER: "guess"})
        assert guessed.status_code == 200 and guessed.json()["query_id"]
        assert warm_ups[-1] is False
    assert ClickLog(settings.effective_click_log_url).read().queries["query_text"].tolist() == ["noise"]


def test_default_host_is_loopback():
    assert Settings().service.host == "127.0.0.1"


def test_admin_routes_need_the_token(client):
    assert client.post("/admin/reload").status_code == 403  # no token configured: disabled


@pytest.fixture
def swappable(indexed, saved_encoder, zeroshot_encoder, tmp_path):
    """A service started on index A (photos), with index B (photos + one more) ready to swap in."""
    _, images = indexed
    settings = Settings(home=tmp_path / "ws", service=ServiceSettings(admin_token=ADMIN_TOKEN))
    model = str(saved_encoder)  # a saved v0 folder: loads in seconds, like a registry model would
    first = build_folder_index(zeroshot_encoder, images, tmp_path / "a", model=model, settings=settings)
    extra = tmp_path / "more"
    shutil.copytree(images, extra)
    Image.open(images / "photos" / "chelsea.png").rotate(90).save(extra / "photos" / "chelsea_rotated.png")
    second = build_folder_index(zeroshot_encoder, extra, tmp_path / "b", model=model, settings=settings)
    assert second.count == first.count + 1
    with TestClient(create_app(settings, index_dir=tmp_path / "a"), base_url=LOOPBACK) as test_client:
        yield test_client, tmp_path / "b", first.count


@contextlib.contextmanager
def searching(client, threads: int = 4):
    """Clients searching throughout the block; yields the statuses and index sizes they saw."""
    seen = {"statuses": [], "counts": set()}
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            seen["statuses"].append(client.post("/search", json={"text": "a cat", "k": 3}).status_code)
            seen["counts"].add(client.get("/health").json()["vectors"])

    workers = [threading.Thread(target=load) for _ in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    try:
        yield seen
    finally:
        time.sleep(1.0)
        stop.set()
        for worker in workers:
            worker.join()


def test_hot_swap_under_load_fails_no_request(swappable):
    client, second_index, first_count = swappable
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/admin/reload").status_code == 401
    with searching(client) as seen:
        started = client.post("/admin/reload", json={"index_dir": str(second_index)}, headers=auth)
        assert started.status_code == 202
        deadline = time.time() + 120
        while (
            client.get("/admin/reload", headers=auth).json()["status"] == "loading" and time.time() < deadline
        ):
            time.sleep(0.2)
    assert client.get("/admin/reload", headers=auth).json()["status"] == "swapped"
    assert seen["statuses"] and set(seen["statuses"]) == {200}
    assert seen["counts"] == {first_count, first_count + 1}
    assert client.get("/health").json()["vectors"] == first_count + 1


def test_a_rebuilt_index_folder_is_swapped_in_by_the_poll(swappable, tmp_path):
    """What a promotion does: the pipeline rebuilds the served folder; the service notices, no token."""
    _, second_index, first_count = swappable
    live = tmp_path / "live"
    shutil.copytree(tmp_path / "a", live)
    settings = Settings(home=tmp_path / "ws", service=ServiceSettings(reload_poll_seconds=0.2))
    with (
        TestClient(create_app(settings, index_dir=live), base_url=LOOPBACK) as client,
        searching(client) as seen,
    ):
        staging = tmp_path / "staging"
        shutil.copytree(second_index, staging)
        retired = tmp_path / "retired"
        live.rename(retired)  # the same two renames save_index_atomic does
        staging.rename(live)
        deadline = time.time() + 120
        while client.get("/health").json()["vectors"] == first_count and time.time() < deadline:
            time.sleep(0.2)
    assert client.app.state.swapper.last["status"] == "swapped"
    assert seen["statuses"] and set(seen["statuses"]) == {200}
    assert seen["counts"] == {first_count, first_count + 1}


def test_a_failed_reload_keeps_serving_the_old_pair(swappable, tmp_path):
    client, _, first_count = swappable
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    (tmp_path / "half-written").mkdir()
    client.post("/admin/reload", json={"index_dir": str(tmp_path / "half-written")}, headers=auth)
    client.app.state.swapper.wait(60)
    status = client.get("/admin/reload", headers=auth).json()
    assert status["status"] == "failed" and "manifest.json missing" in status["error"]
    assert client.get("/health").json()["vectors"] == first_count
    assert client.post("/search", json={"text": "a cat"}).status_code == 200


@pytest.fixture
def real_server(client):
    """The same app under a real uvicorn server on a free 127.0.0.1 port."""
    with served_on_loopback(client.app) as url:
        yield url


def clip_client_module(tmp_path):
    """clip-retrieval's own client module, loaded from its wheel (scripts/setup.sh downloads it)."""
    import importlib.util
    import zipfile

    wheel = PROJECT_ROOT / ".tools" / "wheels" / "clip_retrieval-2.45.0-py3-none-any.whl"
    if not wheel.is_file():
        pytest.fail(f"{wheel} is missing: run `make setup`")
    source = tmp_path / "clip_client.py"
    source.write_bytes(zipfile.ZipFile(wheel).read("clip_retrieval/clip_client.py"))
    spec = importlib.util.spec_from_file_location("clip_client", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_clip_retrievals_client_works_unchanged_against_knn_service(real_server, indexed, tmp_path):
    module = clip_client_module(tmp_path)
    client = module.ClipClient(url=f"{real_server}/knn-service", indice_name="imagesearch", num_images=3)
    by_text = client.query(text="a cup of coffee")
    assert len(by_text) == 3 and {"id", "similarity", "url", "caption"} <= set(by_text[0])
    coffee = str(indexed[1] / "photos" / "coffee.png")
    by_image = client.query(image=coffee)
    assert by_image[0]["caption"].startswith("coffee") and by_image[0]["similarity"] == pytest.approx(
        1.0, abs=1e-3
    )
    assert by_image[0]["url"].startswith(real_server + "/images/")
    bad = module.requests.post(
        f"{real_server}/knn-service", json={"embedding_input": [0.1] * 7, "num_images": 3}
    )
    assert bad.status_code == 422 and "values" in bad.json()["detail"]
    refused = module.requests.post(
        f"{real_server}/knn-service", json={"image_url": "http://example.com/x.png"}
    )
    assert refused.status_code == 422 and "outbound" in refused.json()["detail"]


def test_online_metrics_asset_reads_the_services_click_log(client):
    import dagster as dg

    from assets.online import online_metrics
    from dagster_project.resources import WorkspaceResource

    searched = client.post("/search", json={"text": "coffee", "k": 3}).json()
    client.post("/events", json={"query_id": searched["query_id"], "rank": 1})
    client.post("/search", json={"text": "rocket", "k": 3})  # abandoned
    workspace = WorkspaceResource(home=str(client.settings.home))
    result = dg.materialize([online_metrics], resources={"workspace": workspace})
    event = result.get_asset_materialization_events()[0].materialization
    rows = event.metadata["by_model_and_day"].value
    assert event.metadata["real_queries"].value == 2
    assert rows[0]["ctr_at_k"] == 0.5 and rows[0]["mrr"] == 0.5 and rows[0]["abandonment"] == 0.5


def chromium_driver(tmp_path):
    """Debian's headless Chromium under its ChromeDriver (scripts/setup.sh installs both)."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail("chromium and chromedriver are missing: run `make setup` (installs Debian's packages)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=DriverService(executable_path=driver), options=options)


def test_search_page_in_a_real_browser(real_server, client, indexed, tmp_path):
    """Type a query, see results, click one (recorded in the click log); the combined query, filters,
    facets, infinite scroll and explanations: tests/test_search_features.py."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium_driver(tmp_path)
    wait = WebDriverWait(browser, 90)  # generous: CI machines may be busy
    try:
        browser.get(real_server + "/")
        box = browser.find_element(By.ID, "query")
        box.send_keys("a cup of coffee")
        box.submit()
        wait.until(seen.text_to_be_present_in_element((By.ID, "status"), "results for"))
        cards = browser.find_elements(By.CSS_SELECTOR, "#results .result")
        assert len(cards) == len(PHOTOS)  # 10 indexed; dedup collapses the coffee copy
        assert all(float(card.find_element(By.CLASS_NAME, "score").text) for card in cards)
        wait.until(
            lambda _: all(
                img.get_property("naturalWidth") > 0
                for img in browser.find_elements(By.CSS_SELECTOR, "#results img")
            )
        )
        screenshot = PROJECT_SCREENSHOT_DIR / "search-page.png"
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(screenshot))

        second = cards[1]
        clicked_id = second.get_attribute("data-id")
        second.find_element(By.TAG_NAME, "img").click()
        wait.until(seen.text_to_be_present_in_element((By.ID, "status"), "click on #2 recorded"))
        browser.switch_to.window(browser.window_handles[0])
        clicks = ClickLog(client.settings.effective_click_log_url).read().clicks
        assert clicks[["rank", "image_id"]].values.tolist() == [[2, clicked_id]]
    finally:
        browser.quit()


# --- rerank --------------------------------------------------------------------------------
def unit(*rows):
    matrix = np.array(rows, dtype=np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("threshold", "kept"),
    [(0.99, [0, 2]), (0.999999, [0, 1, 2]), (-1.0, [0])],
)
def test_collapse_keeps_the_best_of_each_group(threshold, kept):
    vectors = unit([1, 0], [1, 0.01], [0, 1])  # 0 and 1 are near-duplicates
    assert collapse_near_duplicates(vectors @ vectors.T > threshold).tolist() == kept


def test_the_near_duplicate_table_gives_a_page_the_pairs_it_would_compare(
    indexed, zeroshot_encoder, tmp_path
):
    root, _ = indexed
    loaded = load_index(root / "index")
    paths = loaded.ids.set_index("id")["path"]
    looked_up = SearchService(zeroshot_encoder, loaded, paths, Settings(home=tmp_path / "a"))
    compared = SearchService(
        zeroshot_encoder,
        loaded,
        paths,
        Settings(home=tmp_path / "b", service=ServiceSettings(near_duplicate_table_rows=0)),
    )
    assert looked_up.ranker.table is not None and compared.ranker.table is None
    positions = np.arange(loaded.ntotal)[::-1]
    candidates = loaded.candidate_vectors(positions)
    near = looked_up.ranker.near_duplicates(positions, candidates)
    coffee = loaded.ids["path"].str.contains("coffee").to_numpy()[positions]
    assert near.sum() == 2 and near[np.ix_(coffee, coffee)].sum() == 2  # the copy and its original
    assert (near == compared.ranker.near_duplicates(positions, candidates)).all()


def test_a_row_added_live_is_compared_on_the_page_beside_the_table(indexed, zeroshot_encoder, tmp_path):
    root, images = indexed
    served = tmp_path / "index"
    shutil.copytree(root / "index", served)
    base = load_index(served)
    coffee = images / "photos" / "coffee.png"
    added = pd.DataFrame({"id": ["c0ffeec0ffeec0ff"], "path": [str(coffee)], "title": ["coffee again"]})
    write_delta(served, added, zeroshot_encoder.encode_images([coffee]), [], base.ntotal)
    loaded = load_index(served)
    service = SearchService(
        zeroshot_encoder, loaded, loaded.ids.set_index("id")["path"], Settings(home=tmp_path)
    )
    assert service.ranker.table is not None and service.ranker.table.covered == loaded.ntotal - 1
    positions = np.arange(loaded.ntotal)  # the added row last: not in the table
    near = service.ranker.near_duplicates(positions, loaded.candidate_vectors(positions))
    coffees = loaded.ids["path"].str.contains("coffee").to_numpy()
    assert coffees.sum() == 3 and near[-1, np.flatnonzero(coffees)[:-1]].all()  # near both coffees
    kept = collapse_near_duplicates(near)
    assert coffees[kept].sum() == 1


def test_mmr_with_lambda_one_is_the_relevance_order():
    scores = np.array([0.2, 0.9, 0.5])
    assert mmr(scores, None, 3, 1.0).tolist() == [1, 2, 0]


def test_mmr_promotes_a_different_result_over_a_copy():
    # candidates 0 and 1 are the same picture; 2 is different and slightly less relevant
    scores = np.array([0.90, 0.89, 0.80])
    vectors = unit([1, 0], [1, 0], [0, 1])
    assert mmr(scores, vectors, 2, 1.0).tolist() == [0, 1]
    # λ=0.7: after 0, candidate 1 is worth 0.7*0.89 - 0.3*1 = 0.323, candidate 2 is 0.7*0.80 - 0 = 0.56
    assert mmr(scores, vectors, 2, 0.7).tolist() == [0, 2]


def test_mmr_never_returns_more_than_there_is():
    assert mmr(np.array([0.5]), np.ones((1, 1)), 10, 0.5).tolist() == [0]
    assert mmr(np.array([]), np.zeros((0, 2)), 10, 0.5).tolist() == []


# --- the query worker ------------------------------------------------------------------------------
class RecordingAnswerer:
    """A BatchAnswerer that records each batch: the worker's contract is the Protocol, not the service."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.fail_on = fail_on

    def encode_batch(self, queries: list[Query], pages: list[PageRequest], timings: dict[str, float]):
        self.release.wait(5)
        texts = [q.keyword_text for q in queries]
        self.batches.append(texts)
        if self.fail_on in texts:
            raise ValueError(f"cannot encode {self.fail_on!r}")
        return texts

    def search_batch(self, encoded: list[str], pages: list[PageRequest], timings: dict[str, float]):
        return [Answer([Result(f"id{n}", float(n), 1)], "m") for n in range(len(encoded))]


class OverlapAnswerer(RecordingAnswerer):
    """Its search of the first batch finishes only once the second batch has been encoded."""

    def __init__(self) -> None:
        super().__init__()
        self.release.set()
        self.second_encoded = threading.Event()

    def encode_batch(self, queries: list[Query], pages: list[PageRequest], timings: dict[str, float]):
        texts = super().encode_batch(queries, pages, timings)
        if texts == ["second"]:
            self.second_encoded.set()
        return texts

    def search_batch(self, encoded: list[str], pages: list[PageRequest], timings: dict[str, float]):
        if encoded == ["first"] and not self.second_encoded.wait(5):
            raise RuntimeError("the second batch was not encoded while the first was searched")
        return super().search_batch(encoded, pages, timings)


PAGE = PageRequest(k=1, offset=0, diversity=1.0, dedup=False)


def test_worker_batches_what_waits_and_answers_each_caller_its_own_result():
    answerer = RecordingAnswerer()
    worker = QueryWorker(answerer, max_batch=8)
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(worker.submit, Query.of(text="first"), PAGE)
        time.sleep(0.2)  # the first batch is now blocked in encode; the next four queue up behind it
        rest = [pool.submit(worker.submit, Query.of(text=f"q{i}"), PAGE) for i in range(4)]
        time.sleep(0.2)
        answerer.release.set()
        answers = [first.result(5), *(f.result(5) for f in rest)]
    assert answerer.batches[0] == ["first"] and sorted(answerer.batches[1]) == ["q0", "q1", "q2", "q3"]
    assert all(a.timings_ms["batch"] in (1, 4) for a in answers)
    assert answers[0].results[0].id == "id0"
    worker.close()


def test_worker_encodes_the_next_batch_while_the_last_one_is_searched():
    answerer = OverlapAnswerer()
    worker = QueryWorker(answerer, max_batch=8)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(worker.submit, Query.of(text="first"), PAGE)
        while not answerer.batches:  # the first batch has been encoded: it is being searched
            time.sleep(0.01)
        second = pool.submit(worker.submit, Query.of(text="second"), PAGE)
        assert first.result(10).results[0].id == "id0"
        assert second.result(10).results[0].id == "id0"
    assert answerer.batches == [["first"], ["second"]]
    assert [thread.name for thread in worker.threads] == ["query-encoder", "query-searcher"]
    worker.close()
    for thread in worker.threads:
        thread.join(5)
        assert not thread.is_alive()  # close() stops both stages once their queues are answered


def test_worker_hands_an_error_to_its_callers_and_keeps_serving():
    answerer = RecordingAnswerer(fail_on="bad")
    answerer.release.set()
    worker = QueryWorker(answerer, max_batch=1)
    with pytest.raises(ValueError, match="cannot encode 'bad'"):
        worker.submit(Query.of(text="bad"), PAGE)
    assert worker.submit(Query.of(text="good"), PAGE).results[0].id == "id0"
    worker.close()
    # after close (a swap replaced this service) a late caller is answered on its own thread
    assert worker.submit(Query.of(text="late"), PAGE).results[0].id == "id0"


def test_a_loaded_service_is_warmed_up_through_its_worker_before_serving(indexed, tmp_path):
    root, _ = indexed
    warmed = SearchService.from_index(Settings(home=tmp_path / "ws"), root / "index")
    cold = SearchService.from_index(
        Settings(home=tmp_path / "ws", service=ServiceSettings(warm_up=False)), root / "index"
    )
    try:
        assert warmed.worker.threads and all(thread.is_alive() for thread in warmed.worker.threads)
        assert len(warmed.text_vectors) == 0  # the warm-up query is not a user's: not kept
        assert not cold.worker.threads
    finally:
        warmed.close()
        cold.close()
