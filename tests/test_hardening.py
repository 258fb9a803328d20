"""Hostile input against the service and the decode path: each test names the defect it pins (a
review's list: decode bombs, deep pages, weak tokens, reload paths, body sizes, field limits, hostile
JSON, symlinked images, Host / Origin checks, pickled models)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from imagesearch.index.folder import build_folder_index
from imagesearch.index.store import LoadedIndex, load_index
from imagesearch.serving.app import create_app
from imagesearch.serving.service import SearchService
from imagesearch.serving.types import PageRequest
from imagesearch.settings import ServiceSettings, Settings
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

    def recorded(self, queries, k):
        depths.append((len(queries), k))
        return search(self, queries, k)

    monkeypatch.setattr(LoadedIndex, "search", recorded)
    vectors = np.repeat(loaded.vectors[:1].astype(np.float32), 3, axis=0)
    pages = [PageRequest(1, 0, 1.0, False), PageRequest(1, 1, 1.0, False), PageRequest(1, 0, 1.0, False)]
    answers = service.search_many(vectors, pages, {})
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
