"""The online experiments on live traffic: slices, team-draft pages, shadow runs and swaps served by
the real service with a champion and a challenger pair; simulated users who click by known relevance
drive the loop into the experiment report, the promotion rule's online stage and the rollback rule."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient

from imagesearch.evaluation.promotion import Decision, GuardTest, OnlineRule, decide_online
from imagesearch.feedback.clicklog import ClickLog
from imagesearch.feedback.online_experiment import (
    estimated_eta,
    experiment_report,
    logged_swap_rates,
)
from imagesearch.feedback.simulation import SimulatedQuery, clicked_ranks
from imagesearch.feedback.step import evidence_from_report, rollback_step
from imagesearch.feedback.traffic import simulate_traffic
from imagesearch.index.store import LoadedIndex, load_index
from imagesearch.models import registry
from imagesearch.models.encoders import Encoder
from imagesearch.serving.app import create_app
from imagesearch.serving.experiments import CHALLENGER, CHAMPION, SliceDraw, interleaved, swapped
from imagesearch.serving.service import SearchService
from imagesearch.serving.types import Answer, Result
from imagesearch.settings import EvaluationSettings, ExperimentSettings, ServiceSettings, Settings
from tests.test_serving import LOOPBACK, PHOTOS, indexed  # noqa: F401 (the module's photo index)

TEXTS = {
    "astronaut": "an astronaut",
    "coffee": "a cup of coffee",
    "chelsea": "a cat",
    "rocket": "a rocket",
    "camera": "a man with a camera",
    "horse": "a horse",
    "coins": "coins",
    "moon": "the moon",
}


# --- slices and pages, by hand ----------------------------------------------------------------
def test_slices_follow_their_shares_and_need_a_challenger_and_a_first_page():
    draw = SliceDraw(ExperimentSettings(interleave_share=0.5, shadow_share=0.3, swap_share=0.1), seed=0)
    kinds = [draw.draw(has_challenger=True, first_page=True) for _ in range(20_000)]
    shares = {kind: kinds.count(kind) / len(kinds) for kind in ("interleaving", "shadow", "swap", None)}
    assert shares == pytest.approx({"interleaving": 0.5, "shadow": 0.3, "swap": 0.1, None: 0.1}, abs=0.015)
    alone = {draw.draw(has_challenger=False, first_page=True) for _ in range(2000)}
    assert alone == {"swap", None}
    assert {draw.draw(has_challenger=True, first_page=False) for _ in range(200)} == {None}
    with pytest.raises(ValueError, match="add up to"):
        ExperimentSettings(interleave_share=0.7, shadow_share=0.4)


def page(ids: str, version: str) -> Answer:
    return Answer([Result(i, 1.0 - n / 10, n + 1) for n, i in enumerate(ids)], version, total=len(ids))


def test_an_interleaved_page_keeps_who_contributed_each_result():
    champion, challenger = page("abcd", "models:/m/1"), page("bxyz", "models:/m/2")
    shown = interleaved(champion, challenger, "models:/m/2", 4, np.random.default_rng(3))
    ids = [r.id for r in shown.answer.results]
    assert [r.rank for r in shown.answer.results] == [1, 2, 3, 4] and len(set(ids)) == 4
    for image_id, team in zip(ids, shown.teams, strict=True):
        contributed = {"champion": "abcd", "challenger": "bxyz"}[team]
        assert image_id in contributed
    assert sorted(shown.teams) == [CHALLENGER, CHALLENGER, CHAMPION, CHAMPION]  # two picks each
    assert shown.experiment == {"kind": "interleaving", "challenger_version": "models:/m/2"}


def test_the_randomized_slice_swaps_one_adjacent_pair_or_none():
    outcomes = set()
    for seed in range(40):
        shown = swapped(page("abcde", "v"), np.random.default_rng(seed))
        k, swap = shown.experiment["swap_rank"], shown.experiment["swapped"]
        expected = list("abcde")
        if swap:
            expected[k - 1], expected[k] = expected[k], expected[k - 1]
        assert [r.id for r in shown.answer.results] == expected
        assert [r.rank for r in shown.answer.results] == [1, 2, 3, 4, 5]
        outcomes.add((k, swap))
    assert {swap for _, swap in outcomes} == {True, False} and len({k for k, _ in outcomes}) == 4


# --- the loop on the real service ---------------------------------------------------------------
def shuffled(loaded: LoadedIndex, version: str) -> LoadedIndex:
    """A ranker known to be worse: the same vectors under a shuffled id map (each result a random
    image), so simulated users who know relevance should prefer the champion."""
    ids = loaded.ids.copy()
    ids[["id", "path"]] = ids[["id", "path"]].sample(frac=1, random_state=1).to_numpy()
    return LoadedIndex(loaded.index, replace(loaded.manifest, model=version), ids, loaded.vectors)


@pytest.fixture
def experiment_client(indexed, zeroshot_encoder, tmp_path):  # noqa: F811
    root, _ = indexed
    settings = Settings(
        home=tmp_path / "ws",
        service=ServiceSettings(max_k=10, mode="vector"),
        experiment=ExperimentSettings(interleave_share=0.6, shadow_share=0.2, swap_share=0.2),
    )
    loaded = load_index(root / "index")
    paths = loaded.ids.set_index("id")["path"]
    champion = SearchService(zeroshot_encoder, loaded, paths, settings)
    worse = shuffled(load_index(root / "index"), "models:/imagesearch/2")
    challenger = SearchService(zeroshot_encoder, worse, worse.ids.set_index("id")["path"], settings)
    app = create_app(settings, service=champion, challenger=challenger)
    with TestClient(app, base_url=LOOPBACK) as client:
        client.settings, client.loaded = settings, loaded
        yield client


def photo_queries(loaded: LoadedIndex) -> list[SimulatedQuery]:
    id_of = {
        path.rsplit("/", 1)[1].removesuffix(".png"): i
        for i, path in zip(loaded.ids["id"], loaded.ids["path"], strict=True)
    }
    return [SimulatedQuery(text, {id_of[name]: 3}) for name, text in TEXTS.items()]


def test_simulated_users_drive_the_experiment_to_the_online_decision(experiment_client):
    client = experiment_client
    assert client.get("/health").json()["challenger_version"] == "models:/imagesearch/2"
    traffic = simulate_traffic(client, photo_queries(client.loaded), sessions=240, eta=1.0, k=5, seed=0)
    assert traffic.failed == 0 and traffic.clicks > 50
    state = client.app.state
    deadline = time.monotonic() + 30
    while state.background and time.monotonic() < deadline:  # the last shadow answers
        time.sleep(0.05)
    tables = state.clicks.read()  # waits for the service's queued writes
    assert tables.queries["simulated"].all() and len(tables.queries) == 240
    kinds = tables.experiments["kind"].value_counts()
    assert set(kinds.index) == {"interleaving", "shadow", "swap"} and kinds["interleaving"] > 100
    interleaved_ids = tables.experiments.loc[tables.experiments["kind"] == "interleaving", "query_id"]
    shown = tables.impressions[tables.impressions["query_id"].isin(interleaved_ids)]
    assert len(tables.teams) == len(shown)  # every interleaved impression has its team
    assert set(tables.shadow["query_id"]) == set(
        tables.experiments.loc[tables.experiments["kind"] == "shadow", "query_id"]
    )

    report = experiment_report(tables, "models:/imagesearch/2")
    rate = report["win_rate"]
    assert rate["wins_champion"] > rate["wins_challenger"] and rate["p_value"] < 0.05
    arms = report["guardrails"]
    assert arms["challenger"]["ctr"] < arms["champion"]["ctr"]
    assert arms["challenger"]["pages"] == kinds["interleaving"]
    assert arms["champion"]["pages"] == kinds["shadow"]  # its own pages: shadowed ones (no plain slice here)
    gaps = report["guardrail_differences"]
    assert gaps["ctr"]["difference"] == pytest.approx(arms["challenger"]["ctr"] - arms["champion"]["ctr"])
    assert all(0 < gaps[name]["standard_error"] < 0.1 for name in ("ctr", "abandonment"))
    assert report["shadow"]["queries"] == kinds["shadow"] and report["shadow"]["overlap_at_k"] < 1
    assert sum(day["wins_champion"] for day in report["by_day"]) == rate["wins_champion"]

    evidence = evidence_from_report(report | {"simulated": True})
    rule = OnlineRule(min_queries=20, require_win=False, guard=GuardTest(0.02))
    decision = decide_online(Decision(True, "offline passed"), evidence, rule)
    assert not decision.promote and "significant loss" in decision.reason and "simulated" in decision.reason
    waiting = decide_online(Decision(True, "offline passed"), evidence, replace(rule, min_queries=10_000))
    assert not waiting.promote and "waiting for the online experiment" in waiting.reason
    rates = logged_swap_rates(tables)
    assert rates["impressions"].sum() == kinds["swap"]


def test_the_position_bias_is_estimated_from_the_logged_randomized_slice(tmp_path):
    """Users with examination (1/r)**1.2 on a log filled through the service's own write path."""
    log = ClickLog(f"sqlite:///{tmp_path / 'clicks.sqlite'}")
    rng = np.random.default_rng(0)
    relevance = {f"img{i}": 3 for i in range(10)}  # every result relevant: clicks follow examination
    for _ in range(6000):
        shown = swapped(page([f"img{i}" for i in range(6)], "v"), rng)
        query_id = log.log_query(
            [(r.id, r.score) for r in shown.answer.results],
            model_version="v",
            experiment=shown.experiment,
            simulated=True,
        )
        for rank in clicked_ranks([r.id for r in shown.answer.results], relevance, 1.2, rng):
            log.log_click(query_id, rank)
    tables = log.read()
    assert estimated_eta(tables, min_queries=10_000) is None  # too few yet: the configured eta stays
    assert estimated_eta(tables, min_queries=100) == pytest.approx(1.2, abs=0.2)


# --- the rollback rule on a real registry ---------------------------------------------------------
def fill(log: ClickLog, version: str, at: datetime, pages: int, click_share: float, rng) -> None:
    for n in range(pages):
        query_id = log.log_query(
            [("a", 0.9), ("b", 0.8)], model_version=version, at=at + timedelta(seconds=n)
        )
        if rng.random() < click_share:
            log.log_click(query_id, 1)


@pytest.mark.parametrize(("after_share", "rolled_back"), [(0.2, True), (0.6, False)])
def test_a_champion_whose_guardrails_degrade_is_rolled_back(
    tmp_path, saved_encoder, after_share, rolled_back
):
    settings = Settings(home=tmp_path / "ws", evaluation=EvaluationSettings(online_min_queries=50))
    encoder = Encoder.load(saved_encoder)
    first = registry.log_encoder(encoder, settings, run_name="first", alias=registry.CHAMPION)
    second = registry.log_encoder(encoder, settings, run_name="second")
    assert "not promoted by the rule" in rollback_step(settings).reason
    registry.record_promotion(settings, second.uri, promote=True, reason="passed")
    promoted_at = datetime.now(UTC)
    log, rng = ClickLog(settings.effective_click_log_url), np.random.default_rng(0)
    fill(log, first.uri, promoted_at - timedelta(hours=2), 120, 0.6, rng)
    assert "not enough plain traffic" in rollback_step(settings).reason
    fill(log, second.uri, promoted_at + timedelta(minutes=1), 120, after_share, rng)
    decision = rollback_step(settings)
    assert decision.roll_back is rolled_back, decision.reason
    expected = first.version if rolled_back else second.version
    assert registry.alias_version(settings, registry.CHAMPION) == expected
    if rolled_back:
        assert "guardrail degraded" in registry.rollback_reason(settings, second.uri)
