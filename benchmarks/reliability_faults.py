"""The fault half of `make reliability`: broken index builds swapped in under load, a service killed
and restarted under load, and a soak with periodic swaps. Each returns one table row; see
reliability.py for the hostile-input half and how a run is judged."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from imagesearch.common.io import folder_atomic
from imagesearch.index.store import IDS_FILE, INDEX_FILE, MANIFEST_FILE, VECTORS_FILE

ADMIN = {"Authorization": "Bearer reliability-suite-token-0123456789"}


class Searchers:
    """Four clients searching until stopped: statuses, latencies and the query ids they were given."""

    def __init__(self, base: str, clients: int = 4, pause_s: float = 0.0):
        self.base, self.pause_s = base, pause_s
        self.statuses: Counter = Counter()
        self.latencies: list[float] = []
        self.query_ids: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop) for _ in range(clients)]

    def __enter__(self) -> Searchers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _loop(self) -> None:
        with httpx.Client(base_url=self.base, timeout=120) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    response = client.post("/search", json={"text": "a noisy picture", "k": 5})
                except httpx.HTTPError:
                    self.statuses["refused (server down)"] += 1
                    time.sleep(0.2)
                    continue
                self.latencies.append(time.perf_counter() - started)
                self.statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    self.query_ids.append(response.json()["query_id"])
                time.sleep(self.pause_s)


def publish(live: Path, fill: Callable[[Path], None]) -> None:
    """Replace the served folder the way the pipeline does: staged, then one atomic exchange."""
    with folder_atomic(live) as staging:
        fill(staging)


def copy_of(good: Path, note: str, damage: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """The good index, its manifest changed (a new build to the watcher), optionally damaged."""

    def fill(staging: Path) -> None:
        for name in (INDEX_FILE, IDS_FILE, VECTORS_FILE):
            shutil.copy(good / name, staging / name)
        manifest = json.loads((good / MANIFEST_FILE).read_text())
        manifest["extra"]["build"] = note
        if damage is not None:
            damage(staging)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest))

    return fill


def truncate(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return damage


def garbage(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(b"\x00not a file of its kind" * 64)


def manifest_field(**changes) -> Callable[[Path], None]:
    def fill(staging: Path) -> None:
        manifest = json.loads((staging / MANIFEST_FILE).read_text())
        manifest.update(changes)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest))

    return fill


def hot_swap_faults(base: str, live: Path, good: Path) -> dict:
    """Broken builds published into the served folder while four clients search; then a good one."""
    faults = {
        "truncated index.faiss": copy_of(good, "t", truncate(INDEX_FILE)),
        "corrupted ids.parquet": copy_of(good, "c", garbage(IDS_FILE)),
        "short vectors file": copy_of(good, "s", truncate(VECTORS_FILE)),
        "missing model artifacts": _then(copy_of(good, "m"), manifest_field(model="/nonexistent/encoder")),
        "dimension mismatch": _then(copy_of(good, "d"), _narrow_vectors),
        "restore of the good build": copy_of(good, "restored"),
    }
    outcomes = {}
    with httpx.Client(base_url=base, timeout=120) as admin, Searchers(base) as searchers:
        for name, fill in faults.items():
            publish(live, fill)
            outcomes[name] = _swap_outcome(admin)
    return {
        "suite": "hot-swap faults under 4 clients",
        "faults": len(faults),
        "requests": sum(searchers.statuses.values()),
        "failed requests": sum(n for s, n in searchers.statuses.items() if s != "200"),
        "outcomes": outcomes,
    }


def _then(*fills: Callable[[Path], None]) -> Callable[[Path], None]:
    def fill(staging: Path) -> None:
        for step in fills:
            step(staging)

    return fill


def _narrow_vectors(folder: Path) -> None:
    """Vectors and a Flat index of 16 dimensions under a manifest naming the 384-d model."""
    import faiss

    count = len(np.load(folder / VECTORS_FILE))
    vectors = np.random.default_rng(0).standard_normal((count, 16)).astype(np.float32)
    index = faiss.IndexFlatIP(16)
    index.add(vectors)
    faiss.write_index(index, str(folder / INDEX_FILE))
    np.save(folder / VECTORS_FILE, vectors.astype(np.float16))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest.update(dim=16, kind="flat", factory="Flat", params={}, rerank_factor=1)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def _swap_outcome(admin: httpx.Client, timeout: float = 60.0) -> str:
    """The watcher's verdict on the build just published: 'swapped' or 'failed: <reason>'."""
    deadline = time.time() + timeout
    time.sleep(1.5)  # at least one poll
    while time.time() < deadline:
        status = admin.get("/admin/reload", headers=ADMIN).json()
        if status["status"] in ("swapped", "failed"):
            return status["status"] + (f": {status['error'][:80]}" if status["status"] == "failed" else "")
        time.sleep(0.3)
    return "no verdict"


def service_kills(start: Callable[[], object], base: str, click_db: Path, kills: int = 5) -> dict:
    """kill -9 the service under load, restart it, `kills` times; every answered query id must be in
    the click log afterwards, and the database must pass SQLite's integrity check."""
    from reliability import wait_until_up

    with Searchers(base) as searchers:
        server = start()
        for _ in range(kills):
            wait_until_up(base)
            time.sleep(3)
            server.send_signal(signal.SIGKILL)
            server.wait()
            server = start()
        wait_until_up(base)
        time.sleep(2)
    server.terminate()
    server.wait(30)
    with sqlite3.connect(click_db) as connection:
        logged = {row[0] for row in connection.execute("select query_id from queries")}
        integrity = connection.execute("pragma integrity_check").fetchone()[0]
    spooled = click_db.with_name(click_db.name + ".spool.jsonl")
    if spooled.exists():
        logged |= {json.loads(line)["query"]["query_id"] for line in spooled.read_text().splitlines()}
    answered = set(searchers.query_ids)
    return {
        "suite": f"service kill -9 x{kills} under 4 clients",
        "requests": sum(searchers.statuses.values()),
        "answered": len(answered),
        "answered but not logged": len(answered - logged),
        "sqlite integrity": integrity,
        "statuses": dict(searchers.statuses),
    }


def soak(base: str, live: Path, good: Path, pid: int, seconds: float, swap_every: float = 120.0) -> dict:
    """A steady load for `seconds` with a new build swapped in every `swap_every`: memory slope, open
    files, 5xx and p99."""
    samples: list[tuple[float, float]] = []
    started = time.time()
    files_before = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    swaps = 0
    with httpx.Client(base_url=base, timeout=120) as admin, Searchers(base, pause_s=0.05) as searchers:
        next_swap = started + swap_every
        while time.time() - started < seconds:
            samples.append((time.time() - started, _rss_mb(pid)))
            if time.time() >= next_swap:
                publish(live, copy_of(good, f"soak-{swaps}"))
                swaps += _swap_outcome(admin) == "swapped"
                next_swap += swap_every
            time.sleep(5)
    files_after = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    minutes = np.array([t for t, _ in samples]) / 60
    rss = np.array([r for _, r in samples])
    half = len(rss) // 2
    slope = float(np.polyfit(minutes[half:], rss[half:], 1)[0]) if half >= 2 else float("nan")
    latencies = np.array(searchers.latencies) * 1000
    return {
        "suite": f"soak {seconds / 60:.0f} min, swap every {swap_every / 60:.0f} min",
        "requests": sum(searchers.statuses.values()),
        "5xx": sum(n for s, n in searchers.statuses.items() if s.startswith("5")),
        "swaps": swaps,
        "p50 ms": round(float(np.percentile(latencies, 50)), 1),
        "p99 ms": round(float(np.percentile(latencies, 99)), 1),
        "RSS MB start/end": f"{rss[0]:.0f}/{rss[-1]:.0f}",
        "RSS slope, 2nd half (MB/min)": round(slope, 2),
        "open files start/end": f"{files_before}/{files_after}",
    }


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
