"""Search features: combined queries, filters inside the index, keyword + hybrid ranking, live index
updates, score cut-off, facets, date order and explanations; through the core and through HTTP."""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imagesearch.catalog.build import read_catalog
from imagesearch.catalog.step import catalog_step
from imagesearch.common.executor import InProcess
from imagesearch.common.images import DEFAULT_LIMITS
from imagesearch.embeddings.backfill import backfill
from imagesearch.embeddings.store import model_key
from imagesearch.evaluation.modes import file_name_titles, mode_results
from imagesearch.evaluation.ranking import ModelRankings
from imagesearch.evaluation.sets import EvalSets
from imagesearch.index.build import build_tuned_index
from imagesearch.index.delta import DELTA_FOLDER, write_delta
from imagesearch.index.folder import build_folder_index
from imagesearch.index.keywords import (
    KeywordIndex,
    hybrid_ranking,
    reciprocal_rank_fusion,
    write_keyword_index,
)
from imagesearch.index.metadata import Filters, RowMetadata
from imagesearch.index.search import exact_neighbours, recall_at
from imagesearch.index.step import index_step
from imagesearch.index.store import index_fingerprint, load_index
from imagesearch.serving.app import create_app
from imagesearch.serving.query_syntax import parse_query
from imagesearch.serving.ranking import combine
from imagesearch.serving.types import BadQuery, PageRequest, Query, Term
from imagesearch.settings import IndexSettings, ServiceSettings, Settings
from tests.conftest import noise_image, served_on_loopback
from tests.test_serving import PROJECT_SCREENSHOT_DIR, chromium_driver

LOOPBACK = "http://127.0.0.1"
GROUPS = {
    "space": ("astronaut", "rocket", "moon"),
    "animals": ("chelsea", "horse"),
    "things": ("coffee", "camera", "coins"),
}


# --- the query algebra ------------------------------------------------------------------------------
def unit(*values: float) -> np.ndarray:
    vector = np.array(values, np.float32)
    return vector / np.linalg.norm(vector)


def test_a_combined_query_is_the_normalised_weighted_sum_of_its_terms():
    terms = np.stack([unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)])
    query = Query((Term(text="cat", weight=2), Term(text="dog", weight=1), Term(text="snow", weight=-0.5)))
    encoded = combine(query, terms)
    expected = unit(2, 1, -0.5)
    np.testing.assert_allclose(encoded.vector, expected, rtol=1e-6)
    assert encoded.keyword_text == "cat dog"  # a negative term's words are not looked for
    result = unit(0.2, 0.9, 0.4)
    contributions = encoded.weights * (encoded.term_vectors @ result) / encoded.norm
    assert contributions.sum() == pytest.approx(float(encoded.vector @ result), abs=1e-6)


def test_terms_that_cancel_out_are_a_bad_query():
    same = np.stack([unit(1, 2, 3), unit(1, 2, 3)])
    outcome = combine(Query((Term(text="cat"), Term(text="cat", weight=-1))), same)
    assert isinstance(outcome, BadQuery) and "cancel" in str(outcome)


def test_the_command_line_syntax(tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(photo)
    terms, uploads = parse_query(f"a red car + {photo} - snow")
    assert [(t.text, t.upload, t.weight) for t in terms] == [
        ("a red car", None, 1.0),
        (None, "file0", 1.0),
        ("snow", None, -1.0),
    ]
    assert uploads["file0"] == photo.read_bytes()
    terms, _ = parse_query("2:cat - 0.5:dog + id:abc123")
    assert [(t.text, t.image_id, t.weight) for t in terms] == [
        ("cat", None, 2.0),
        ("dog", None, -0.5),
        (None, "abc123", 1.0),
    ]
    assert [(t.text, t.weight) for t in parse_query("- snow + t-shirt")[0]] == [
        ("snow", -1.0),
        ("t-shirt", 1.0),
    ]
    with pytest.raises(ValueError, match="empty"):
        parse_query("  ")


def test_reciprocal_rank_fusion_against_hand_computed_ranks():
    items, scores = reciprocal_rank_fusion([np.array([10, 11, 12]), np.array([12, 10, 13])])
    # 10: 1/61 + 1/62, 12: 1/63 + 1/61, 11: 1/62, 13: 1/63
    assert items.tolist() == [10, 12, 11, 13]
    assert scores.tolist() == pytest.approx([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62, 1 / 63])
    assert reciprocal_rank_fusion([np.array([], np.int64)])[0].tolist() == []


def test_reciprocal_rank_fusion_keeps_first_met_order_on_ties():
    # 5 and 7 tie (rank 1 of one list, rank 2 of the other); 5 was met first; 9 and 8 tie too
    items, _ = reciprocal_rank_fusion([np.array([5, 7, 9]), np.array([7, 5, 8])])
    assert items.tolist() == [5, 7, 9, 8]
    items, _ = reciprocal_rank_fusion([np.array([7, 5]), np.array([5, 7])])
    assert items.tolist() == [7, 5]


def test_a_hybrid_page_puts_an_exact_title_match_first():
    titles = ["apple bitten", "red apple", "apple bitten twice", "green apple", "Apple, Bitten!"]
    by_vector, by_keyword = np.array([1, 3, 2, 0, 4]), np.array([2, 1, 3, 0, 4])
    # fused alone: 1 (1/61 + 1/62) and 2 (1/63 + 1/61) ahead of the image the query names
    assert reciprocal_rank_fusion([by_vector, by_keyword])[0][:2].tolist() == [1, 2]
    ranked = hybrid_ranking(by_vector, by_keyword, titles, "Apple bitten")
    # both exact titles (case and punctuation aside) first in keyword order, then the fusion
    assert ranked.tolist() == [0, 4, 1, 2, 3]
    assert hybrid_ranking(by_vector, by_keyword, titles, "apple")[:2].tolist() == [1, 2]
    assert hybrid_ranking(by_vector, np.array([], np.int64), titles, "apple bitten").tolist() == [
        1,
        3,
        2,
        0,
        4,
    ]


# --- metadata, filters and the keyword index ------------------------------------------------------
def frame_of(count: int) -> pd.DataFrame:
    rows = np.arange(count)
    return pd.DataFrame(
        {
            "id": [f"{i:08x}" for i in rows],
            "path": [f"/images/{i}.png" for i in rows],
            "source": np.where(rows % 2 == 0, "even", "odd"),
            "category": np.where(rows % 3 == 0, "cats", "dogs"),
            "tags": [["red", "round"] if i % 5 == 0 else ["red"] if i % 5 == 1 else [] for i in rows],
            "title": [f"item {i}" for i in rows],
            "caption": None,
            "added_ns": rows * 1000,
            "width": 100 + rows % 7,
            "height": 50 + rows % 3,
        }
    )


def test_filter_masks_match_a_plain_reading_of_the_rows():
    frame = frame_of(60)
    metadata = RowMetadata(frame)
    cases = {
        Filters(categories=("cats",)): frame["category"] == "cats",
        Filters(tags=("red", "round")): frame["tags"].map(lambda t: bool({"red", "round"} & set(t))),
        Filters(tags=("red", "round"), all_tags=True): frame["tags"].map(
            lambda t: {"red", "round"} <= set(t)
        ),
        Filters(sources=("odd",), min_width=103): (frame["source"] == "odd") & (frame["width"] >= 103),
        Filters(added_after_ns=10_000, added_before_ns=20_000): frame["added_ns"].between(10_000, 19_999),
        Filters(min_height=52, categories=("nope",)): frame["category"] == "nope",
    }
    for filters, expected in cases.items():
        assert metadata.mask(filters).tolist() == expected.tolist(), filters
    assert not Filters().active and Filters(min_width=1).active
    facets = metadata.facets(np.arange(10))
    assert facets["category"] == {"dogs": 6, "cats": 4} and facets["tags"] == {"red": 4, "round": 2}


def test_keyword_search_ranks_by_bm25_with_stemming_and_respects_a_filter(tmp_path):
    frame = frame_of(4).assign(
        title=["red sports car", "blue cars parked", "a cat", "car"], tags=[[], ["vehicle"], [], []]
    )
    write_keyword_index(tmp_path / "k.sqlite", RowMetadata(frame))
    keywords = KeywordIndex([tmp_path / "k.sqlite"])
    rows, scores = keywords.search("cars", 10)
    assert set(rows.tolist()) == {0, 1, 3} and rows[0] == 3  # the shortest title matching is best
    assert np.all(np.diff(scores) <= 0)
    allowed = np.array([True, False, True, False])
    assert keywords.search("car", 10, allowed)[0].tolist() == [0]
    assert keywords.search('car" OR (vehicle', 10)[0].size == 3  # the query's quotes are no syntax
    assert keywords.search("!!!", 10)[0].size == 0


@pytest.fixture(scope="module")
def vectors_and_frame():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(10_000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, frame_of(len(vectors))


# budgets that make each structure the choice for 10,000 x 32
STRUCTURES = {
    "Flat": IndexSettings(),
    "HNSW32,Flat": IndexSettings(latency_budget_ms=0.01),
    "IVF256,PQ16x4fs": IndexSettings(latency_budget_ms=0.01, memory_budget_mb=0.2, rerank_budget_mb=0.001),
    "IVF256,PQ4+32": IndexSettings(latency_budget_ms=0.01, memory_budget_mb=0.2),
}


@pytest.mark.parametrize("factory", list(STRUCTURES))
def test_a_filter_inside_the_index_returns_the_exact_filtered_answer_up_to_recall(
    factory, vectors_and_frame, tmp_path
):
    vectors, frame = vectors_and_frame
    manifest = build_tuned_index(vectors, frame, tmp_path / "index", model="m", config=STRUCTURES[factory])
    assert manifest.factory == factory
    loaded = load_index(tmp_path / "index")
    queries = vectors[:50] + 0.05
    unfiltered = recall_at(loaded.search(queries, 10)[1], exact_neighbours(vectors, queries, 10))
    for filters in (Filters(categories=("cats",)), Filters(tags=("red",), min_width=104)):
        mask = loaded.metadata.mask(filters)
        rows = np.flatnonzero(mask)
        truth = rows[exact_neighbours(vectors[rows], queries, 10)]
        for exact_below in (0, loaded.exact_subset_rows):  # in the index (selector), then exact
            loaded.exact_subset_rows = exact_below
            _, found = loaded.search(queries, 10, mask)
            assert mask[found].all() and (found >= 0).all()
            # inside the index: as close to the exact filtered answer as the index is to exact search
            wanted = unfiltered - 0.1 if exact_below == 0 else 1.0
            assert recall_at(found, truth) >= wanted, (filters, exact_below)


def test_a_very_selective_filter_still_returns_every_row_it_keeps(vectors_and_frame, tmp_path):
    vectors, frame = vectors_and_frame
    build_tuned_index(vectors, frame, tmp_path / "index", model="m", config=STRUCTURES["IVF256,PQ16x4fs"])
    loaded = load_index(tmp_path / "index")
    loaded.exact_subset_rows = 0  # even through the IVF lists, whose probes would miss most of them
    mask = np.zeros(len(vectors), bool)
    mask[[5, 777, 4242, 9999]] = True
    _, found = loaded.search(vectors[:3], 10, mask)
    assert all(sorted(row[row >= 0].tolist()) == [5, 777, 4242, 9999] for row in found)


# --- live updates -----------------------------------------------------------------------------------
def test_a_delta_adds_and_removes_rows_without_a_rebuild(vectors_and_frame, tmp_path):
    vectors, frame = vectors_and_frame
    base, new = 9_000, slice(9_000, 9_020)
    build_tuned_index(
        vectors[:base], frame.iloc[:base], tmp_path / "index", model="m", config=IndexSettings()
    )
    before = index_fingerprint(tmp_path / "index")
    removed = frame["id"].iloc[[0, 1, 2]].tolist()
    write_delta(tmp_path / "index", frame.iloc[new], vectors[new], removed, base)
    assert index_fingerprint(tmp_path / "index") != before
    loaded = load_index(tmp_path / "index")
    assert loaded.live_count == base + 20 - 3 and set(removed).isdisjoint(loaded.live_ids)
    _, found = loaded.search(vectors[new], 1)
    assert [loaded.ids["id"][p] for p in found[:, 0]] == frame["id"].iloc[new].tolist()
    _, everything = loaded.search(vectors[:3], loaded.ntotal)
    assert not np.isin(everything, [0, 1, 2]).any()
    assert loaded.keywords.search("item 9005", 1)[0].tolist() == [9005]  # the delta's keywords
    build_tuned_index(
        vectors[:base], frame.iloc[:base], tmp_path / "index", model="m", config=IndexSettings()
    )
    assert not (tmp_path / "index" / DELTA_FOLDER).exists()  # a rebuild replaces the base and its delta


def test_the_index_step_publishes_small_changes_live_and_rebuilds_past_the_limit(
    workspace_settings, zeroshot_encoder, tiny_folder
):
    settings = workspace_settings.model_copy(
        update={"index": IndexSettings(delta_max_fraction=0.5, delta_max_rows=2)}
    )

    def catalogue_and_embed() -> None:
        catalog_step(settings, record=False, progress=False)
        options = {"batch_size": 4, "executor": InProcess(1), "limits": DEFAULT_LIMITS, "progress": False}
        backfill(
            zeroshot_encoder,
            read_catalog(settings.catalog_path),
            settings.embeddings_dir / model_key("v0"),
            **options,
        )

    catalogue_and_embed()
    assert index_step(settings, model="v0", record=False).delta is None  # no base yet
    noise_image(11).save(tiny_folder / "tools" / "red_box.png")
    catalogue_and_embed()
    result = index_step(settings, model="v0", record=False)
    assert result.delta is not None and (result.delta["added"], result.delta["removed"]) == (1, 0)
    assert len(load_index(settings.search_index_dir).live_ids) == 7
    for seed in (12, 13):
        noise_image(seed).save(tiny_folder / "tools" / f"box_{seed}.png")
    catalogue_and_embed()
    rebuilt = index_step(settings, model="v0", record=False)  # 3 changes > delta_max_rows
    assert rebuilt.delta is None and rebuilt.manifest.count == 9
    assert not (settings.search_index_dir / DELTA_FOLDER).exists()


# --- the service ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grouped(tmp_path_factory, zeroshot_encoder, saved_encoder):
    """Real photos in category folders (category = folder, title = file name)."""
    from skimage import data

    root = tmp_path_factory.mktemp("features")
    for category, names in GROUPS.items():
        (root / "images" / category).mkdir(parents=True)
        for number, name in enumerate(names):
            pixels = getattr(data, name)()
            image = Image.fromarray(pixels if pixels.dtype == "uint8" else (pixels * 255).astype("uint8"))
            path = root / "images" / category / f"{name}.png"
            image.save(path)
            stamp = 1_700_000_000 + 86_400 * (number + 3 * len(category))
            os.utime(path, (stamp, stamp))
    settings = Settings(home=root / "ws")
    build_folder_index(
        zeroshot_encoder, root / "images", root / "index", model=str(saved_encoder), settings=settings
    )
    return root


@pytest.fixture
def client(grouped, tmp_path):
    settings = Settings(
        home=tmp_path / "ws", service=ServiceSettings(max_k=20, reload_poll_seconds=0.5, warm_up=False)
    )
    with TestClient(create_app(settings, index_dir=grouped / "index"), base_url=LOOPBACK) as test_client:
        yield test_client


def search(client, **body) -> dict:
    response = client.post("/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_combined_terms_over_http_with_explanations_that_add_up(client):
    answer = search(client, terms=[{"text": "a rocket in space"}, {"text": "an animal", "weight": -0.5}], k=5)
    assert answer["results"] and answer["mode"] == "hybrid"  # the default (SERVICE__MODE)
    for result in answer["results"]:
        contributions = [t["contribution"] for t in result["explanation"]["terms"]]
        assert sum(contributions) == pytest.approx(result["score"], abs=2e-3)
        assert [t["term"] for t in result["explanation"]["terms"]] == ["a rocket in space", "an animal"]
    first = answer["results"][0]["id"]
    more = search(client, terms=[{"image_id": first}, {"text": "a cat", "weight": 0.5}], k=3)
    assert more["results"][0]["explanation"]["terms"][0]["term"] == f"image:{first}"


def test_an_uploaded_image_and_a_text_combine_in_one_multipart_request(client, grouped):
    photo = (grouped / "images" / "animals" / "horse.png").read_bytes()
    response = client.post(
        "/search",
        files={"picture": ("horse.png", photo, "image/png")},
        data={"query": '{"terms": [{"upload": "picture"}, {"text": "space", "weight": -1}], "k": 3}'},
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["caption"] == "horse"


def test_filters_facets_total_and_the_score_cut_off(client):
    everything = search(client, text="a photo", k=20, dedup=False)
    assert everything["total"] == 8 and everything["facets"]["category"] == {
        "space": 3,
        "things": 3,
        "animals": 2,
    }
    space = search(client, text="a photo", k=20, filters={"category": "space"}, dedup=False)
    assert {r["category"] for r in space["results"]} == {"space"} and space["total"] == 3
    assert space["facets"]["category"] == {"space": 3}
    either = search(client, text="a photo", filters={"category": ["space", "animals"]}, k=20, dedup=False)
    assert either["total"] == 5
    cut = everything["results"][3]["score"]
    strong = search(client, text="a photo", k=20, min_score=cut, dedup=False)
    assert strong["total"] == 4 and all(r["score"] >= cut for r in strong["results"])
    assert not strong["total_is_lower_bound"]
    assert search(client, text="a photo", filters={"min_width": 100_000})["results"] == []


def test_date_order_and_paging_within_the_cut_off(client):
    newest = search(client, text="a photo", k=20, sort="date", dedup=False)["results"]
    dates = [r["added"] for r in newest]
    assert dates == sorted(dates, reverse=True)
    second_page = search(client, text="a photo", k=4, offset=4, sort="date", dedup=False)["results"]
    assert [r["id"] for r in second_page] == [r["id"] for r in newest[4:8]]


def test_keyword_and_hybrid_modes(client):
    keyword = search(client, text="rocket", mode="keyword")
    assert [r["caption"] for r in keyword["results"]] == ["rocket"]
    assert keyword["results"][0]["explanation"]["keywords"] == ["rocket"]
    hybrid = search(client, text="rocket", mode="hybrid", k=8)
    assert hybrid["results"][0]["caption"] == "rocket" and len(hybrid["results"]) > 1
    assert set(hybrid["results"][0]["explanation"]["ranks"]) == {"vector", "keyword"}
    refused = client.post(
        "/search",
        json={
            "terms": [{"text": "rocket", "weight": -1}, {"image_id": keyword["results"][0]["id"]}],
            "mode": "keyword",
        },
    )
    assert refused.status_code == 422 and "keyword mode" in refused.json()["detail"]


def test_keywords_are_looked_up_beside_the_encode_and_give_the_same_page(client, monkeypatch):
    """The worker encodes while the keyword lookup runs on its own thread; the page is the one a
    lookup after the ANN search gives."""
    service = client.app.state.service
    threads = []
    search_keywords = KeywordIndex.search

    def recorded(self, *arguments):
        threads.append(threading.current_thread().name)
        return search_keywords(self, *arguments)

    monkeypatch.setattr(KeywordIndex, "search", recorded)
    over_http = search(client, text="rocket", mode="hybrid", k=8)
    assert threads and all(name.startswith("keyword-lookup") for name in threads)
    query = Query.of(text="rocket")
    request = PageRequest(k=8, offset=0, diversity=service.config.diversity, dedup=True, mode="hybrid")
    in_sequence = service.search_many(service.encode([query], {}), [request], {})[0]
    assert [r["id"] for r in over_http["results"]] == [r.id for r in in_sequence.results]
    assert threads[-1] == threading.current_thread().name  # without a lookup ahead: on the caller's
    schema = client.get("/openapi.json").json()["paths"]["/search"]["post"]["responses"]["200"]
    assert schema["content"]["application/json"]["schema"]["$ref"].endswith("/SearchResponse")
    service.close()  # a swap replaced the pair: a request that picked it just before is still answered
    assert [r.id for r in service.answer(query, request).results] == [r.id for r in in_sequence.results]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"terms": [{"text": "cat", "weight": 0}]}, "weight"),
        ({"terms": [{"text": "cat", "image_id": "x"}]}, "exactly one"),
        ({"terms": [{"upload": "nothing"}]}, "no uploaded file"),
        ({"terms": [{"text": "cat"}, {"text": "cat", "weight": -1}]}, "cancel"),
        ({"terms": [{"text": "cat"}] * 9}, "at most 8"),
        ({"text": "cat", "terms": [{"text": "dog"}]}, "give terms, or exactly one"),
        ({"text": "cat", "filters": {"colour": "red"}}, "colour"),
        ({"text": "cat", "mode": "magic"}, "mode"),
        ({"text": "cat", "min_score": 2}, "min_score"),
    ],
)
def test_bad_combined_queries_get_a_422_with_a_message(client, body, message):
    response = client.post("/search", json=body)
    assert response.status_code == 422, response.text
    assert message in str(response.json()["detail"])


def test_a_live_update_reaches_the_service_under_load_and_a_removed_image_is_never_returned(
    grouped, zeroshot_encoder, tmp_path
):
    served = tmp_path / "index"
    shutil.copytree(grouped / "index", served)
    settings = Settings(home=tmp_path / "ws", service=ServiceSettings(reload_poll_seconds=0.3, warm_up=False))
    new_image = tmp_path / "new" / "painted_box.png"
    new_image.parent.mkdir()
    Image.new("RGB", (64, 48), (230, 200, 20)).save(new_image)
    base = load_index(served)
    removed = base.ids.loc[base.ids["path"].str.endswith("horse.png"), "id"].tolist()
    seen, stop = [], threading.Event()
    with TestClient(create_app(settings, index_dir=served), base_url=LOOPBACK) as client:

        def load() -> None:
            while not stop.is_set():
                response = client.post("/search", json={"text": "a horse", "k": 20, "dedup": False})
                seen.append((response.status_code, [r["id"] for r in response.json()["results"]]))

        threads = [threading.Thread(target=load) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        added = pd.DataFrame({"id": ["feedfacefeedface"], "path": [str(new_image)], "title": ["painted box"]})
        published = time.perf_counter()
        write_delta(served, added, zeroshot_encoder.encode_images([new_image]), removed, base.ntotal)
        deadline = time.time() + 60
        more_like_new = {"terms": [{"image_id": "feedfacefeedface"}], "k": 1}
        while client.post("/search", json=more_like_new).status_code == 422 and time.time() < deadline:
            time.sleep(0.05)
        reached = time.perf_counter() - published
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
        found = search(client, terms=[{"image_id": "feedfacefeedface"}], k=1)["results"]
    assert reached < 30
    assert found[0]["id"] == "feedfacefeedface"
    assert {status for status, _ in seen} == {200}
    before = [ids for _, ids in seen]
    assert any(removed[0] in ids for ids in before)  # served before the update...
    after_swap = [ids for ids in before if "feedfacefeedface" in ids]
    assert after_swap and all(removed[0] not in ids for ids in after_swap)  # ...never after it


def test_the_page_combines_terms_filters_facets_scroll_and_explanations_in_a_real_browser(grouped, tmp_path):
    """Headless Chromium: a text, a facet click (filter chip), "more like this" added as a term and
    flipped to minus, an uploaded image term, infinite scroll, the explanation on hover."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    settings = Settings(home=tmp_path / "ws", service=ServiceSettings(reload_poll_seconds=0))
    browser = chromium_driver(tmp_path)
    wait = WebDriverWait(browser, 90)
    cards = lambda: browser.find_elements(By.CSS_SELECTOR, "#results .result")  # noqa: E731

    def searched(expected: str) -> None:
        status = lambda: browser.find_element(By.ID, "status").text  # noqa: E731
        try:
            wait.until(lambda _: expected in status() and "searching" not in status())
        except TimeoutException as error:
            raise AssertionError(f"waited for {expected!r}; the status says {status()!r}") from error

    with served_on_loopback(create_app(settings, index_dir=grouped / "index")) as url:
        try:
            browser.get(url + "/?k=3")  # 3 per page: 8 images take three pages of scrolling
            box = browser.find_element(By.ID, "query")
            box.send_keys("a photo")
            box.submit()
            searched("of 8 results")
            wait.until(lambda _: len(cards()) == 8)  # page after page while the grid's end is in view
            searched("8 of 8 results")
            assert len({card.get_attribute("data-id") for card in cards()}) == 8

            browser.find_element(By.CSS_SELECTOR, '#facets .facet[data-value="space"]').click()
            searched("of 3 results")
            chips = browser.find_elements(By.CSS_SELECTOR, "#filters .chip")
            assert len(chips) == 1 and chips[0].text.startswith("category: space")
            assert {card.get_attribute("data-category") for card in cards()} == {"space"}

            first = cards()[0]
            first.find_element(By.CSS_SELECTOR, ".more").click()
            wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "#terms .chip"))
            searched("results for “a photo” + image")
            browser.find_element(By.CSS_SELECTOR, "#terms .chip .sign").click()
            wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "#terms .chip.negative"))
            searched("results for “a photo” \u2212 image")

            upload = grouped / "images" / "animals" / "horse.png"
            browser.find_element(By.ID, "file").send_keys(str(upload))
            wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#terms .chip")) == 2)
            searched("+ an image")

            ActionChains(browser).move_to_element(cards()[0]).perform()
            why = cards()[0].find_element(By.CLASS_NAME, "why")
            wait.until(lambda _: why.is_displayed())
            assert "a photo:" in why.text and "horse.png" in why.text and "weight -1" in why.text
            screenshot = PROJECT_SCREENSHOT_DIR / "search-features.png"
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            assert browser.save_screenshot(str(screenshot))
        finally:
            browser.quit()


def test_the_evaluation_ranks_each_text_query_by_vector_keyword_and_hybrid():
    corpus = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "path": ["/x/red_car.png", "/x/blue_car.png", "/x/cat.png", "/x/dog.png"],
            "category": ["car", "car", "pet", "pet"],
        }
    )
    text_qrels = pd.DataFrame(
        {
            "query": ["car", "car", "red car"],
            "origin": ["label", "label", "title"],
            "image_id": ["a", "b", "a"],
            "grade": [1, 1, 2],
        }
    )
    sets = EvalSets(corpus, pd.DataFrame(columns=["query_image_id", "image_id", "grade"]), text_qrels)
    vector = ModelRankings({}, {"car": ["c", "d", "a", "b"], "red car": ["c", "b", "a", "d"]})
    results = mode_results(sets, vector, file_name_titles(sets))
    assert file_name_titles(sets)[0] == "red car"
    assert results["vector"]["text_to_image/label"]["recall_at_1"] == 0
    assert results["keyword"]["text_to_image/label"]["recall_at_10"] == 1
    assert results["keyword"]["text_to_image/title"]["mrr"] == 1  # the known item by its file name
    # "red car" fused: a = 1/63 + 1/61 (3rd by vector, 1st by keywords) beats b = 1/62 + 1/62
    assert results["hybrid"]["text_to_image/title"]["mrr"] == 1
