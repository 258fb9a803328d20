"""`make ui` for real: start Dagster's webserver, materialize the catalog through GraphQL as the UI does."""

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

from imagesearch.settings import PROJECT_ROOT

pytestmark = pytest.mark.usefixtures("dvc_available")

START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 180
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
{ assetOrError(assetKey: {path: ["image_catalog"]}) {
    ... on Asset { assetMaterializations(limit: 1) {
      runId metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def webserver(tmp_path: Path, tiny_folder: Path) -> Iterator[str]:
    port = free_port()
    env = os.environ | {
        "IMAGESEARCH_HOME": str(tmp_path / "ws"),
        "IMAGESEARCH_SOURCES": json.dumps([{"name": "tiny", "path": str(tiny_folder)}]),
        "IMAGESEARCH_CATALOG__WORKERS": "1",
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


def test_catalog_is_materialized_from_the_ui(webserver: str):
    params = {
        "selector": {
            "repositoryLocationName": "dagster_project.definitions",
            "repositoryName": "__repository__",
            "jobName": "catalog_job",
        },
        "runConfigData": {},
    }
    launched = graphql(webserver, LAUNCH, params=params)["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = "STARTING"
    while status not in {"SUCCESS", "FAILURE", "CANCELED"} and time.monotonic() < deadline:
        time.sleep(1)
        status = graphql(webserver, RUN_STATUS, id=run_id)["runOrError"]["status"]
    assert status == "SUCCESS"

    latest = graphql(webserver, LATEST_MATERIALIZATION)["assetOrError"]["assetMaterializations"][0]
    assert latest["runId"] == run_id
    counts = {entry["label"]: entry.get("intValue") for entry in latest["metadataEntries"]}
    assert counts["catalogued"] == 6
