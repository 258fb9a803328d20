"""What the click log says about the online experiments (pure pandas over `LogTables`):

- `interleaving_outcomes`: per interleaved query against a challenger, who won it (clicks credited to
  the team that contributed the clicked result; A = challenger, B = champion, None = tie / no click);
- `guardrails`: per arm, CTR (clicks per shown result) and abandonment (share of pages with no click).
  The challenger's arm: its contributed results and the interleaved pages; the champion's arm: its
  contributed results and the pages that showed its own ranking unchanged (no experiment, or shadowed)
  over the same period; `guardrail_differences`: challenger minus champion, with standard errors;
- `shadow_summary`: the challenger's latency and top-k overlap on shadowed queries;
- `logged_swap_rates`: the randomized slice as (rank, shown_at, clicks, impressions) for estimate_eta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from imagesearch.feedback.interleaving import A, B, win_rate
from imagesearch.feedback.log_schema import LogTables
from imagesearch.feedback.simulation import estimate_eta

TEAMS = ["challenger", "champion"]  # as the log names them (team A and B of the team draft)


def interleaved_queries(tables: LogTables, challenger_version: str) -> pd.Series:
    """The ids of the queries interleaved against this challenger."""
    experiments = tables.experiments
    chosen = (experiments["kind"] == "interleaving") & (
        experiments["challenger_version"] == challenger_version
    )
    return experiments.loc[chosen, "query_id"]


def champion_pages(tables: LogTables) -> pd.Series:
    """Per query: whether the user saw the champion's page as it ranked it (no experiment, or a
    shadowed one: the challenger's answer is never shown)."""
    changed = tables.experiments.loc[tables.experiments["kind"] != "shadow", "query_id"]
    return ~tables.queries["query_id"].isin(changed)


def interleaving_outcomes(tables: LogTables, challenger_version: str) -> pd.DataFrame:
    """One row per interleaved query: query_id, day, winner (A challenger, B champion, None)."""
    mine = interleaved_queries(tables, challenger_version)
    teams = tables.teams[tables.teams["query_id"].isin(mine)]
    clicked = tables.clicks[tables.clicks["query_id"].isin(mine)][["query_id", "rank"]]
    credited = clicked.merge(teams, on=["query_id", "rank"])
    counts = credited.groupby(["query_id", "team"]).size().unstack(fill_value=0)
    counts = counts.reindex(index=mine, columns=TEAMS, fill_value=0)
    winner = np.where(
        counts["challenger"] > counts["champion"],
        A,
        np.where(counts["champion"] > counts["challenger"], B, None),
    )
    return pd.DataFrame({"query_id": counts.index, "winner": winner}).merge(_days(tables), on="query_id")


def _days(tables: LogTables) -> pd.DataFrame:
    created = pd.to_datetime(tables.queries["created_at"], utc=True)
    return pd.DataFrame({"query_id": tables.queries["query_id"], "day": created.dt.strftime("%Y-%m-%d")})


def experiment_arms(tables: LogTables, challenger_version: str) -> dict[str, pd.Series]:
    """The query ids of each arm the guardrails compare: "challenger", the interleaved pages;
    "champion", the champion's own pages since the experiment began."""
    # the experiment's period starts at its first query of any kind: a shadowed one may come first
    in_experiment = tables.experiments.loc[
        tables.experiments["challenger_version"] == challenger_version, "query_id"
    ]
    created = pd.to_datetime(tables.queries["created_at"], utc=True)
    started = created[tables.queries["query_id"].isin(in_experiment)].min()
    plain = tables.queries["query_id"][champion_pages(tables) & (created >= started)]
    return {"challenger": interleaved_queries(tables, challenger_version), "champion": plain}


def guardrails(tables: LogTables, challenger_version: str) -> dict[str, dict[str, float | None]]:
    """CTR and abandonment per arm (see the module's docstring); None where an arm saw nothing."""
    arms = experiment_arms(tables, challenger_version)
    per_team = _team_clicks(tables, arms["challenger"])
    with_click = set(tables.clicks["query_id"])
    return {
        arm: {
            "ctr": _finite(_ratio(per_team["clicked"][arm], per_team["shown"][arm])),
            "abandonment": _finite(_abandonment(pages, with_click)),
            "pages": len(pages),
        }
        for arm, pages in arms.items()
    }


def guardrail_differences(tables: LogTables, challenger_version: str) -> dict[str, dict[str, float | None]]:
    """Challenger minus champion on each guardrail, with the difference's standard error.

    The page is the independent unit (clicks on one page are not independent draws), so a ratio's
    error comes from the delta method over pages (Deng et al., 2018). CTR is paired: both teams'
    results share each interleaved page. Abandonment is not: the arms are different pages."""
    arms = experiment_arms(tables, challenger_version)
    per_team = _team_clicks(tables, arms["challenger"])
    ctr_terms = [_influence(per_team["clicked"][team], per_team["shown"][team]) for team in TEAMS]
    with_click = set(tables.clicks["query_id"])
    abandoned = {arm: (~pages.isin(with_click)).astype(float) for arm, pages in arms.items()}
    return {
        "ctr": {
            "difference": _finite(_ratio_gap(per_team["clicked"], per_team["shown"])),
            "standard_error": _finite(_mean_error(ctr_terms[0] - ctr_terms[1])),
        },
        "abandonment": {
            "difference": _finite(abandoned["challenger"].mean() - abandoned["champion"].mean()),
            "standard_error": _finite(np.hypot(*map(_mean_error, abandoned.values()))),
        },
    }


def _team_clicks(tables: LogTables, interleaved: pd.Series) -> dict[str, pd.DataFrame]:
    """Per interleaved page (rows) and team (columns): results "shown" and "clicked"."""
    teams = tables.teams[tables.teams["query_id"].isin(interleaved)]
    clicks = tables.clicks[["query_id", "rank"]].drop_duplicates().assign(clicked=1)
    shown = teams.merge(clicks, on=["query_id", "rank"], how="left").fillna({"clicked": 0})
    per_page = shown.groupby(["query_id", "team"])["clicked"].agg(shown="count", clicked="sum")
    return {
        column: per_page[column].unstack("team", fill_value=0).reindex(columns=TEAMS, fill_value=0)
        for column in ("shown", "clicked")
    }


def _ratio(numerator: pd.Series, denominator: pd.Series) -> float:
    total = float(denominator.sum())
    return float(numerator.sum()) / total if total else float("nan")


def _ratio_gap(clicked: pd.DataFrame, shown: pd.DataFrame) -> float:
    return _ratio(clicked["challenger"], shown["challenger"]) - _ratio(clicked["champion"], shown["champion"])


def _influence(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    """Each page's linearized share of sum(numerator) / sum(denominator): the delta method's terms,
    whose mean's standard error is the ratio's."""
    if denominator.sum() == 0:
        return pd.Series(np.nan, index=numerator.index)
    ratio = numerator.sum() / denominator.sum()
    return (numerator - ratio * denominator) / denominator.mean()


def _mean_error(terms: pd.Series) -> float:
    return float(terms.std(ddof=1) / np.sqrt(len(terms))) if len(terms) > 1 else float("nan")


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None  # JSON has no NaN


def _abandonment(pages: pd.Series, with_click: set[str]) -> float:
    return float((~pages.isin(with_click)).mean()) if len(pages) else float("nan")


@dataclass(frozen=True, slots=True)
class PageGuardrails:
    """CTR per shown result and abandonment of some plain pages, with their standard errors."""

    ctr: float
    ctr_error: float
    abandonment: float
    abandonment_error: float
    pages: int


def page_guardrails(tables: LogTables, query_ids: pd.Series) -> PageGuardrails:
    """The guardrails of some plain pages: a champion's before and after its promotion, for the
    rollback rule."""
    shown = tables.impressions[tables.impressions["query_id"].isin(query_ids)]
    clicks = tables.clicks[["query_id", "rank"]].drop_duplicates().assign(clicked=1)
    per_page = (
        shown.merge(clicks, on=["query_id", "rank"], how="left")
        .fillna({"clicked": 0})
        .groupby("query_id")["clicked"]
        .agg(shown="count", clicked="sum")
    )
    abandoned = (~query_ids.isin(set(tables.clicks["query_id"]))).astype(float)
    return PageGuardrails(
        ctr=_ratio(per_page["clicked"], per_page["shown"]),
        ctr_error=_mean_error(_influence(per_page["clicked"], per_page["shown"])),
        abandonment=float(abandoned.mean()) if len(abandoned) else float("nan"),
        abandonment_error=_mean_error(abandoned),
        pages=len(query_ids),
    )


def shadow_summary(tables: LogTables, challenger_version: str) -> dict[str, float | int]:
    runs = tables.shadow[tables.shadow["challenger_version"] == challenger_version]
    if runs.empty:
        return {"queries": 0}
    return {
        "queries": len(runs),
        "overlap_at_k": round(float(runs["overlap_at_k"].mean()), 4),
        "champion_ms_p50": round(float(runs["champion_ms"].median()), 2),
        "challenger_ms_p50": round(float(runs["challenger_ms"].median()), 2),
        "challenger_ms_p95": round(float(runs["challenger_ms"].quantile(0.95)), 2),
    }


def logged_swap_rates(tables: LogTables) -> pd.DataFrame:
    """Per (rank k, shown at): the clicks and impressions of the results the ranker put at k, in the
    randomized slice (shown at k + 1 when the pair was swapped): what `estimate_eta` reads."""
    swaps = tables.experiments[tables.experiments["kind"] == "swap"][["query_id", "swap_rank", "swapped"]]
    swaps = swaps.assign(
        rank=swaps["swap_rank"].astype(int),
        shown_at=swaps["swap_rank"].astype(int) + swaps["swapped"].astype(bool).astype(int),
    )
    clicks = tables.clicks[["query_id", "rank"]].drop_duplicates().rename(columns={"rank": "shown_at"})
    rows = swaps.merge(clicks.assign(clicks=1), on=["query_id", "shown_at"], how="left").fillna({"clicks": 0})
    return rows.groupby(["rank", "shown_at"], as_index=False).agg(
        clicks=("clicks", "sum"), impressions=("query_id", "count")
    )


def estimated_eta(tables: LogTables, min_queries: int) -> float | None:
    """The position-bias exponent from the randomized slice, once it holds `min_queries` queries
    with a click; None before (the caller keeps its configured eta)."""
    swaps = tables.experiments[tables.experiments["kind"] == "swap"]["query_id"]
    if swaps.isin(tables.clicks["query_id"]).sum() < min_queries:
        return None
    eta = estimate_eta(logged_swap_rates(tables))
    return eta if np.isfinite(eta) else None


def experiment_report(tables: LogTables, challenger_version: str) -> dict:
    """The interleaving experiment against one challenger: the win rate with its interval, per day
    too, each arm's guardrails, and the shadow summary."""
    outcomes = interleaving_outcomes(tables, challenger_version)
    overall = win_rate(outcomes["winner"].tolist())
    days = [
        {
            "day": day,
            **_win_rate_dict(win_rate(group["winner"].tolist())),
            "guardrails": guardrails(_on_day(tables, day), challenger_version),
        }
        for day, group in outcomes.groupby("day")
    ]
    return {
        "challenger": challenger_version,
        "interleaved_queries": len(outcomes),
        "win_rate": _win_rate_dict(overall),
        "by_day": days,
        "guardrails": guardrails(tables, challenger_version),
        "guardrail_differences": guardrail_differences(tables, challenger_version),
        "shadow": shadow_summary(tables, challenger_version),
    }


def _on_day(tables: LogTables, day: str) -> LogTables:
    days = _days(tables)
    return tables.only(days.loc[days["day"] == day, "query_id"])


def _win_rate_dict(result) -> dict:
    return {
        "wins_challenger": result.wins_a,
        "wins_champion": result.wins_b,
        "ties": result.ties,
        "rate": round(result.rate, 4),
        "low": round(result.low, 4),
        "high": round(result.high, 4),
        "p_value": float(result.p_value),
    }
