"""Online comparison: team-draft interleaving against hand-computed cases, the win-rate statistics,
and interleaving against an A/B test on the same simulated users."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from imagesearch.evaluation.promotion import (
    Decision,
    GuardTest,
    OnlineEvidence,
    OnlineRule,
    decide_online,
    decide_rollback,
    guardrail_readings,
)
from imagesearch.feedback.drift import two_sample_auc
from imagesearch.feedback.experiments import power_ladder, queries_needed
from imagesearch.feedback.interleaving import A, B, credit, ctr_test, team_draft, win_rate
from imagesearch.feedback.log_schema import LogTables
from imagesearch.feedback.online_experiment import guardrail_differences, guardrails
from imagesearch.feedback.simulation import SimulatedQuery, clicked_ranks


class Coins:
    """A generator whose coin flips are given: random() returns them in turn."""

    def __init__(self, *flips: float) -> None:
        self.flips = list(flips)

    def random(self) -> float:
        return self.flips.pop(0)


def test_team_draft_against_a_hand_computed_merge():
    # tie -> coin 0.1: A picks 1; B (fewer) picks 2; tie -> coin 0.9: B picks 5 (1, 2 shown); A picks 3
    merged = team_draft(["1", "2", "3", "4"], ["2", "1", "5", "6"], 4, Coins(0.1, 0.9))
    assert merged.ids == ["1", "2", "5", "3"] and merged.teams == [A, B, B, A]


def test_a_ranker_that_runs_out_lets_the_other_pick_and_nothing_repeats():
    merged = team_draft(["1"], ["1", "2", "3"], 5, np.random.default_rng(0))
    assert sorted(merged.ids) == ["1", "2", "3"] and len(set(merged.ids)) == 3


def test_team_sizes_stay_within_one_at_every_prefix():
    rng = np.random.default_rng(1)
    for _ in range(200):
        a, b = rng.permutation(30).astype(str).tolist(), rng.permutation(30).astype(str).tolist()
        teams = team_draft(a, b, 10, rng).teams
        gaps = [abs(teams[:n].count(A) - teams[:n].count(B)) for n in range(2, 11, 2)]
        assert max(gaps) == 0  # after every pair of picks the teams are level


@pytest.mark.parametrize(
    ("clicks", "winner"), [([1, 3], None), ([3], B), ([1, 4], A), ([], None), ([2, 3], B)]
)
def test_clicks_are_credited_to_the_team_that_contributed_the_result(clicks, winner):
    assert credit([A, B, B, A], clicks) == winner


def test_identical_rankers_show_no_preference_under_random_clicks():
    rng = np.random.default_rng(2)
    ranking = [str(i) for i in range(20)]
    outcomes = []
    for _ in range(3000):
        merged = team_draft(ranking, ranking, 10, rng)
        outcomes.append(credit(merged.teams, [int(r) for r in np.flatnonzero(rng.random(10) < 0.2) + 1]))
    assert not win_rate(outcomes).significant


def test_win_rate_statistics_against_known_binomial_values():
    even = win_rate([A] * 60 + [B] * 40 + [None] * 10)
    assert (even.wins_a, even.wins_b, even.ties, even.rate) == (60, 40, 10, 0.6)
    assert even.p_value == pytest.approx(0.0569, abs=1e-3) and not even.significant
    assert (even.low, even.high) == pytest.approx((0.4972, 0.6967), abs=1e-3)  # Clopper-Pearson
    clear = win_rate([A] * 70 + [B] * 30)
    assert clear.significant and clear.low > 0.5
    assert win_rate([None, None]).p_value == 1.0
    assert ctr_test(30, 100, 30, 100) == 1.0 and ctr_test(60, 100, 30, 100) < 0.001


def test_simulated_users_click_by_relevance_under_position_bias():
    rng = np.random.default_rng(3)
    shown = ["r1", "x", "r2", "y"]
    relevance = {"r1": 3, "r2": 3}
    counts = np.zeros(4)
    for _ in range(20_000):
        for rank in clicked_ranks(shown, relevance, eta=1.0, rng=rng, noise=0.0):
            counts[rank - 1] += 1
    # examined with 1/r, clicked when relevant with 3/3: rank 1 always, rank 3 a third of the time
    assert counts[1] == counts[3] == 0
    assert counts[2] / counts[0] == pytest.approx(1 / 3, abs=0.02)


def test_interleaving_decides_with_fewer_queries_than_an_ab_test():
    """The better ranker shows both relevant images first, the worse one after one irrelevant image."""
    items = [f"i{n}" for n in range(40)]
    queries, better, worse = [], {}, {}
    for q in range(30):
        relevant = items[q : q + 2]
        queries.append(SimulatedQuery(f"q{q}", dict.fromkeys(relevant, 2)))
        rest = [i for i in items if i not in relevant]
        better[f"q{q}"], worse[f"q{q}"] = relevant + rest, rest[:1] + relevant + rest[1:]
    rows = power_ladder(queries, better, worse, counts=[25, 100], trials=40, seed=0)
    assert queries_needed(rows) == {"interleaving": 25, "ab": 100}
    assert rows[0].interleaving_power > rows[0].ab_power + 0.3


# --- embedding drift ---------------------------------------------------------------------------------
def clustered(rng: np.random.Generator, count: int, centres: np.ndarray) -> np.ndarray:
    rows = centres[rng.integers(0, len(centres), count)] + rng.normal(0, 0.3, (count, centres.shape[1]))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_the_drift_score_stays_quiet_on_a_held_out_sample_and_fires_on_a_shifted_set():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(8, 64))
    reference = clustered(rng, 2000, centres)
    held_out = clustered(rng, 300, centres)  # the same distribution, rows never seen
    shifted = clustered(rng, 300, np.concatenate([centres[:4], rng.normal(size=(4, 64))]))  # half new
    quiet, fired = two_sample_auc(reference, held_out), two_sample_auc(reference, shifted)
    assert quiet.auc < 0.6 < 0.75 < fired.auc
    assert (fired.recent, fired.reference) == (300, 2000)
    assert two_sample_auc(reference, held_out[:5]).auc is None  # too few to say


@pytest.mark.parametrize(("new_centres", "warns"), [(False, False), (True, True)])
def test_the_drift_asset_and_its_check_on_a_served_index_with_a_live_delta(
    new_centres, warns, tmp_path, monkeypatch
):
    """The served index's newest images (a live delta) against the rest: quiet when they come from
    the same clusters, a warning when half come from new ones."""
    import dagster as dg
    import pandas as pd

    from assets.online import embedding_drift, embedding_drift_below_threshold
    from dagster_project.resources import WorkspaceResource
    from imagesearch.index.build import build_tuned_index
    from imagesearch.index.delta import write_delta
    from imagesearch.settings import IndexSettings, Settings

    monkeypatch.setenv("IMAGESEARCH_DRIFT__RECENT_IMAGES", "100")
    settings = Settings(home=tmp_path / "ws")
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(6, 32))
    base = clustered(rng, 600, centres)
    ids = pd.DataFrame({"id": [f"b{i}" for i in range(600)], "path": "", "added_ns": np.arange(600)})
    build_tuned_index(base, ids, settings.search_index_dir, model="m", config=IndexSettings())
    recent_centres = np.concatenate([centres[:3], rng.normal(size=(3, 32))]) if new_centres else centres
    added = pd.DataFrame(
        {"id": [f"n{i}" for i in range(100)], "path": "", "added_ns": 10_000 + np.arange(100)}
    )
    write_delta(settings.search_index_dir, added, clustered(rng, 100, recent_centres), [], 600)

    result = dg.materialize(
        [embedding_drift, embedding_drift_below_threshold],
        resources={"workspace": WorkspaceResource(home=str(tmp_path / "ws"))},
    )
    assert result.success
    check = result.get_asset_check_evaluations()[0]
    assert check.passed is not warns and check.severity == dg.AssetCheckSeverity.WARN
    metadata = result.asset_materializations_for_node("embedding_drift")[0].metadata
    assert metadata["recent_images"].value == 100 and metadata["queries_auc"].value == "too few rows"


@pytest.mark.parametrize("eta", [0.7, 1.2])
def test_randomized_adjacent_swaps_recover_the_simulated_position_bias(eta):
    from imagesearch.feedback.simulation import estimate_eta, swapped_click_rates

    rng = np.random.default_rng(6)
    items = [f"i{n}" for n in range(60)]
    queries, rankings = [], {}
    for q in range(40):
        ranking = list(rng.permutation(items))
        queries.append(SimulatedQuery(f"q{q}", dict.fromkeys(ranking[:10:2], 3)))  # every other relevant
        rankings[f"q{q}"] = ranking
    rates = swapped_click_rates(queries, rankings, sessions=60_000, eta=eta, depth=6, rng=rng)
    assert estimate_eta(rates) == pytest.approx(eta, abs=0.15)


# --- the promotion rule's online stage ----------------------------------------------------------------
PASSED = Decision(True, "offline: text_to_image.ndcg_at_10 +0.02")
RULE = OnlineRule(min_queries=100, require_win=False, guard=GuardTest(0.02))
WIN_NEEDED = OnlineRule(100, True, GuardTest(0.02))


def evidence(
    wins: int, losses: int, p: float, ctr=(0.30, 0.30), abandonment=(0.40, 0.40), errors=(None, None)
) -> OnlineEvidence:
    return OnlineEvidence(wins, losses, p, ctr, abandonment, standard_errors=errors)


@pytest.mark.parametrize(
    ("offline", "online", "rule", "promote", "reason"),
    [
        (Decision(False, "offline: no gain"), evidence(90, 10, 1e-9), RULE, False, "offline: no gain"),
        (PASSED, None, RULE, False, "0 of 100"),
        (PASSED, evidence(40, 30, 0.3), RULE, False, "70 of 100"),
        (PASSED, evidence(55, 50, 0.7), RULE, True, "guardrails held"),  # no significant loss is enough
        (PASSED, evidence(55, 50, 0.7), WIN_NEEDED, False, "no significant win"),
        (PASSED, evidence(70, 35, 0.001), WIN_NEEDED, True, "guardrails held"),
        (PASSED, evidence(35, 70, 0.001), RULE, False, "significant loss"),
        (PASSED, evidence(70, 35, 0.001, ctr=(0.25, 0.30)), RULE, False, "CTR 0.250 vs 0.300"),
        (PASSED, evidence(70, 35, 0.001, abandonment=(0.45, 0.40)), RULE, False, "abandonment"),
        (PASSED, evidence(70, 35, 0.001, ctr=(0.29, 0.30)), RULE, True, "offline: text_to_image"),
    ],
)
def test_the_online_stage_of_the_promotion_rule_case_by_case(offline, online, rule, promote, reason):
    decision = decide_online(offline, online, rule)
    assert decision.promote is promote and reason in decision.reason


# a fresh demo's abandonment (0.390 on interleaved pages against 0.357), with standard errors of the
# size its page counts give (0.028 measured on another demo's 1,173 / 420 pages)
DEMO_LOSS = {"abandonment": (0.390, 0.357), "errors": (0.005, 0.028)}


@pytest.mark.parametrize(
    ("kind", "online", "promote", "reason"),
    [
        # the same noisy reading: past the tolerance by its point estimate, no harm shown, none ruled out
        ("point", evidence(70, 35, 0.001, **DEMO_LOSS), False, "abandonment 0.390 vs 0.357"),
        ("harm", evidence(70, 35, 0.001, **DEMO_LOSS), True, "no loss beyond 0.02 shown at alpha 0.05"),
        ("non_inferiority", evidence(70, 35, 0.001, **DEMO_LOSS), False, "a loss up to 0.079 not ruled out"),
        # a loss that clears the noise stops every test
        ("harm", evidence(70, 35, 0.001, ctr=(0.20, 0.30), errors=(0.01, 0.02)), False, "0.084 shown"),
        ("non_inferiority", evidence(70, 35, 0.001, ctr=(0.29, 0.30), errors=(0.002, 0.01)), True, "ruled"),
        # no standard error (a report from before they were recorded): the point estimate decides
        ("harm", evidence(70, 35, 0.001, abandonment=(0.45, 0.40)), False, "abandonment 0.450 vs 0.400"),
    ],
)
def test_a_guardrail_stops_a_promotion_by_its_test(kind, online, promote, reason):
    decision = decide_online(PASSED, online, OnlineRule(100, False, GuardTest(0.02, kind)))
    assert decision.promote is promote and reason in decision.reason


def test_a_champion_whose_guardrails_degrade_after_promotion_is_rolled_back():
    guard = GuardTest(0.02)
    assert decide_rollback(guardrail_readings((0.20, 0.30), (0.40, 0.40)), guard).roll_back  # CTR fell
    assert decide_rollback(guardrail_readings((0.30, 0.30), (0.50, 0.40)), guard).roll_back  # abandonment
    shown = decide_rollback(guardrail_readings((0.30, 0.30), (0.50, 0.40), (0.01, 0.02)), guard)
    assert shown.roll_back and "shown" in shown.reason
    noisy = decide_rollback(guardrail_readings((0.30, 0.30), (0.45, 0.40), (0.01, 0.03)), guard)
    assert not noisy.roll_back and "no loss beyond 0.02 shown" in noisy.reason
    held = decide_rollback(guardrail_readings((0.29, 0.30), (0.41, 0.40)), guard)
    assert not held.roll_back and "held" in held.reason


def synthetic_experiment(rng: np.random.Generator, pages: int, click_a: float, click_b: float) -> LogTables:
    """Interleaved pages (6 results, teams alternating) whose users are engaged or not as a whole, so
    the clicks on one page are correlated; and as many champion pages with the same engagement."""
    interleaved = [f"i{n}" for n in range(pages)]
    plain = [f"p{n}" for n in range(pages)]
    shown = [(query, rank) for query in interleaved for rank in range(1, 7)]
    teams = pd.DataFrame(
        [(query, rank, "challenger" if rank % 2 else "champion") for query, rank in shown],
        columns=["query_id", "rank", "team"],
    )
    engaged = np.repeat(rng.random(pages) < 0.6, 6)
    chance = np.where(teams["team"] == "challenger", click_a, click_b) / 0.6
    clicks = teams[engaged & (rng.random(len(teams)) < chance)][["query_id", "rank"]]
    plain_clicked = [query for query in plain if rng.random() < 0.6 * (1 - (1 - click_b / 0.6) ** 6)]
    clicks = pd.concat([clicks, pd.DataFrame({"query_id": plain_clicked, "rank": 1})])
    queries = pd.DataFrame({"query_id": interleaved + plain, "created_at": "2026-11-25 10:00:00"})
    experiments = pd.DataFrame(
        {"query_id": interleaved, "kind": "interleaving", "challenger_version": "models:/m/2"}
    )
    return LogTables(queries, pd.DataFrame(columns=["query_id", "rank"]), clicks, experiments, teams)


def test_the_guardrail_standard_errors_match_the_spread_of_repeated_experiments():
    """The delta method's errors (pages, not results, as the unit) against the spread of the
    differences over 200 repeated experiments of 300 pages per arm."""
    rng = np.random.default_rng(0)
    experiments = (synthetic_experiment(rng, 300, 0.15, 0.2) for _ in range(200))
    runs = [guardrail_differences(tables, "models:/m/2") for tables in experiments]
    for name in ("ctr", "abandonment"):
        differences = np.array([run[name]["difference"] for run in runs])
        errors = np.array([run[name]["standard_error"] for run in runs])
        assert np.mean(errors) == pytest.approx(np.std(differences, ddof=1), rel=0.15)
    assert np.mean([run["ctr"]["difference"] for run in runs]) == pytest.approx(-0.05, abs=0.005)


def test_the_champions_pages_are_counted_from_the_experiments_first_query_of_any_kind():
    """A shadowed query may be the experiment's first: it is one of the champion's own pages, while a
    plain page from before the experiment is not."""
    queries = pd.DataFrame(
        {
            "query_id": ["before", "shadowed", "interleaved", "plain"],
            "created_at": [f"2026-11-25 10:0{minute}:00" for minute in range(4)],
        }
    )
    experiments = pd.DataFrame(
        {
            "query_id": ["shadowed", "interleaved"],
            "kind": ["shadow", "interleaving"],
            "challenger_version": ["models:/m/2", "models:/m/2"],
        }
    )
    teams = pd.DataFrame(
        {"query_id": ["interleaved"] * 2, "rank": [1, 2], "team": ["challenger", "champion"]}
    )
    clicks = pd.DataFrame({"query_id": ["shadowed"], "rank": [1]})
    tables = LogTables(queries, pd.DataFrame(), clicks, experiments, teams)
    arms = guardrails(tables, "models:/m/2")
    assert arms["champion"]["pages"] == 2  # the shadowed and the plain page, not the earlier one
    assert arms["champion"]["abandonment"] == 0.5 and arms["challenger"]["pages"] == 1
