"""The `imagesearch clicks` commands: the impression/click log, simulated users and the online
experiment read from it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Annotated

import typer

from imagesearch.catalog.build import read_catalog
from imagesearch.cli.app import JsonOption, clicks_app, console, user_errors
from imagesearch.feedback.clicklog import ClickLog
from imagesearch.feedback.simulation import simulate_workspace_clicks
from imagesearch.settings import Settings


@clicks_app.command("simulate")
@user_errors
def clicks_simulate() -> None:
    """Write position-biased simulated clicks on the workspace index into the click log."""
    settings = Settings()
    written = simulate_workspace_clicks(
        settings, ClickLog(settings.effective_click_log_url), read_catalog(settings.catalog_path)
    )
    console.print(f"{written} simulated clicks written to {settings.effective_click_log_url}")


@clicks_app.command("traffic")
@user_errors
def clicks_traffic(
    url: Annotated[
        str | None, typer.Option(help="a running search service; default: one started here, on loopback")
    ] = None,
    sessions: Annotated[int, typer.Option(min=1, help="simulated users, one query each")] = 500,
    eta: Annotated[float, typer.Option(min=0, help="examination at rank r is (1/r)**eta")] = 1.0,
    seed: int = 0,
) -> None:
    """Simulated users over HTTP: held-out text queries of the test split, clicks by their relevance
    grades over the whole catalog (the held-out sets' rules), marked simulated in the click log.
    Without --url, the workspace's service is started here for the run (with the challenger, when
    settings.experiment gives it traffic)."""
    import httpx

    from imagesearch.catalog.build import read_catalog
    from imagesearch.evaluation.sets import EvalSets
    from imagesearch.feedback.traffic import held_out_queries, simulate_traffic

    settings = Settings()
    catalog = read_catalog(settings.catalog_path)
    queries = held_out_queries(EvalSets.read(settings.evaluation_dir), catalog)
    with contextlib.ExitStack() as stack:
        base = url or stack.enter_context(_service_on_loopback(settings))
        with httpx.Client(base_url=base, timeout=60) as client:
            served = client.get("/health").json()
            report = simulate_traffic(client, queries, sessions=sessions, eta=eta, seed=seed)
    console.print(
        f"{report.queries} simulated queries ({len(queries)} distinct, held out) against "
        f"{served['model_version']} (challenger {served.get('challenger_version')}): "
        f"{report.clicks} clicks, {report.failed} failed requests"
    )


@contextlib.contextmanager
def _service_on_loopback(settings: Settings) -> Iterator[str]:
    """The search service in a thread of this process, on a free loopback port, until the block ends."""
    import socket
    import threading

    import uvicorn

    from imagesearch.serving.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.1)
    if not server.started:
        raise RuntimeError("the search service did not start (see the lines above)")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


@clicks_app.command("experiment")
@user_errors
def clicks_experiment(json_output: JsonOption = False) -> None:
    """The online experiment against the challenger, from the click log (data/online/experiment.json)."""
    from imagesearch.feedback.step import online_experiment_step

    report = online_experiment_step(Settings())
    if json_output:
        console.print_json(data=report)
        return
    rate = report.get("win_rate")
    where = " (simulated traffic)" if report["simulated"] else ""
    if not rate:
        console.print(f"no challenger registered{where}")
        return
    console.print(
        f"challenger {report['challenger']}{where}: win rate {rate['rate']:.3f} "
        f"[{rate['low']:.3f}, {rate['high']:.3f}] over {rate['wins_challenger'] + rate['wins_champion']} "
        f"decided of {report['interleaved_queries']} interleaved queries, p = {rate['p_value']:.3g}"
    )
    for arm, values in report["guardrails"].items():
        console.print(
            f"  {arm:<10} CTR {_rounded(values['ctr'])}  abandonment {_rounded(values['abandonment'])}  "
            f"pages {values['pages']}"
        )
    for name, gap in report["guardrail_differences"].items():
        console.print(
            f"  {name} challenger - champion: {_rounded(gap['difference'])} "
            f"(standard error {_rounded(gap['standard_error'])})"
        )
    console.print(f"  shadow: {report['shadow']}")
    console.print(f"  position bias: {report['position_bias']}")


def _rounded(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
