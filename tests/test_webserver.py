"""`make ui` for real: start Dagster's webserver and run the whole chain through GraphQL as the UI does.

catalog -> embeddings (all shards in one run) -> index -> training data, training, held-out evaluation
and promotion, on 30 tiny images; then the runs, materializations and asset checks it recorded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dagster_project.automation import RANGE_END, RANGE_START
from imagesearch.settings import PROJECT_ROOT

pytestmark = pytest.mark.usefixtures("dvc_available")

START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 600
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}"""
RUN_STATUS = "query Status($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
LATEST_MATERIALIZATION = """
query Latest($path: [String!]!) { assetOrError(assetKey: {path: $path}) {
    ... on Asset { assetMaterializations(limit: 1) {
      runId metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }"""
CHECKS = """
query Checks($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks {
      name blocking executionForLatestMaterialization { runId status } } } } } } }"""
SMALL_TRAINING = {
    "IMAGESEARCH_TRAINING__FROZEN_EPOCHS": "2",
    "IMAGESEARCH_TRAINING__UNFROZEN_EPOCHS": "1",
    "IMAGESEARCH_TRAINING__BATCH_SIZE": "16",
    "IMAGESEARCH_TRAINING_DATA__SIMULATED_QUERIES": "3",
    "IMAGESEARCH_TRAINING_DATA__SIMULATED_SESSIONS": "10",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def webserver(tmp_path: Path, training_folder: Path, saved_encoder: Path) -> Iterator[str]:
    port = free_port()
    env = os.environ | {
        "IMAGESEARCH_HOME": str(tmp_path / "ws"),
        "IMAGESEARCH_SOURCES": json.dumps([{"name": "tiny", "path": str(training_folder)}]),
        "IMAGESEARCH_CATALOG__WORKERS": "1",
        "IMAGESEARCH_EMBEDDINGS__MODEL": str(saved_encoder),  # a saved v0: loads in a second
        **SMALL_TRAINING,
    }
    log = (tmp_path / "webserver.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "dagster_project.run", "ui", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, server, tmp_path / "webserver.log")
        yield url
    finally:
        stop(server)
        log.close()


def wait_until_up(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"webserver exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"webserver not up after {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM the whole process group (webserver, daemon, code server); SIGKILL only if it hangs."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        pytest.fail("webserver ignored SIGTERM")


def graphql(url: str, query: str, **variables) -> dict:
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=30)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def launch(url: str, job: str, tags: dict[str, str] | None = None) -> str:
    """Launch a job as the UI's Launchpad does and wait for it to finish; returns the run id."""
    params = {
        "selector": {
            "repositoryLocationName": "dagster_project.definitions",
            "repositoryName": "__repository__",
            "jobName": job,
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
    }
    launched = graphql(url, LAUNCH, params=params)["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = "STARTING"
    while status not in {"SUCCESS", "FAILURE", "CANCELED"} and time.monotonic() < deadline:
        time.sleep(1)
        status = graphql(url, RUN_STATUS, id=run_id)["runOrError"]["status"]
    assert status == "SUCCESS", f"{job}: {status}"
    return run_id


def latest(url: str, asset: str) -> tuple[str, dict]:
    found = graphql(url, LATEST_MATERIALIZATION, path=[asset])["assetOrError"]["assetMaterializations"][0]
    return found["runId"], {entry["label"]: entry.get("intValue") for entry in found["metadataEntries"]}


def test_the_chain_runs_from_the_ui_with_its_checks_recorded(webserver: str):
    catalog_run = launch(webserver, "catalog_job")
    run_id, counts = latest(webserver, "image_catalog")
    assert run_id == catalog_run and counts["catalogued"] == 30
    launch(webserver, "embeddings_job", {RANGE_START: "0", RANGE_END: "f"})
    index_run = launch(webserver, "index_job")
    retraining_run = launch(webserver, "retraining_job")
    assert latest(webserver, "search_index")[0] == index_run
    for asset in ("trained_model", "offline_evaluation", "model_promotion"):
        assert latest(webserver, asset)[0] == retraining_run, asset
    for asset, run, expected in [
        ("search_index", index_run, {"index_covers_the_catalog", "index_recall_above_floor"}),
        ("training_examples", retraining_run, {"no_evaluation_leakage"}),
        ("offline_evaluation", retraining_run, {"served_index_is_sound", "evaluation_is_held_out"}),
    ]:
        node = graphql(webserver, CHECKS, path=[asset])["assetNodeOrError"]["assetChecksOrError"]
        checks = {c["name"]: c for c in node["checks"]}
        assert set(checks) == expected
        for name, check in checks.items():
            assert check["blocking"], name
            assert check["executionForLatestMaterialization"] == {"runId": run, "status": "SUCCEEDED"}, name
