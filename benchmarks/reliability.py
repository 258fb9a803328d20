"""Hostile input against a real `imagesearch serve` on 127.0.0.1: how many requests of each kind, how
many 5xx, and the server's peak memory (VmHWM from /proc), while four clients keep searching.

Suites:
- fuzz: every route and method of the service's own OpenAPI schema, each JSON body field replaced by
  hostile values for its declared type, plus whole-body attacks (deep nesting, non-objects, foreign
  content types and origins, oversized and endless bodies);
- bombs: an image zoo (16-bit, palette and 1-bit giants, a JPEG whose header declares 30000x30000,
  a 300-frame GIF, a 64-page TIFF, a PNG with 8 MB of text chunks, truncated and CRC-broken files),
  each uploaded by 8 clients at once;
- searching: the four clients' own requests during both suites.

- hot-swap faults: broken builds published into the served folder under load (truncated
  index.faiss, corrupted ids.parquet, short vectors file, a model that is not there, a dimension
  mismatch), then the good build restored;
- soak: a steady load for --soak-seconds (10 minutes) with a new build swapped in every 2 minutes;
- service kills: kill -9 and restart under load, --kills times;
- pipeline kills (reliability_kills.py): catalog, backfill and index killed at random moments and the
  index at its first rename (strace), then completed: equal to an uninterrupted run, no leftovers.

Pass: no 5xx anywhere, no failed request during swaps, the server still answers, peak memory under
--max-rss-mb, every answered query id in the click log, SQLite's integrity check ok.

    make reliability     # or: .venv/bin/python benchmarks/reliability.py [--max-rss-mb 2500]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from reliability_faults import hot_swap_faults, service_kills, soak
from reliability_kills import pipeline_kills

from imagesearch.index.folder import build_folder_index
from imagesearch.models.builders import build_zeroshot_encoder
from imagesearch.settings import Settings

HOSTILE = {
    "string": [None, "", " ", "x" * 200_000, "\x00\u202e", 12, [], {}, "../../etc/passwd"],
    "integer": [None, -1, 0, 2**63, 2**64, 10**30, 1.5, "7", [], True],
    "number": [None, float("nan"), 1e308, -1e308, "x", [], {}],
    "boolean": [None, "yes", 2, []],
    "array": [None, [], [0.0] * 70_000, [[1.0]], ["x"], "x", {}],
    "object": [None, [], "x", 3],
}
DEEP = b"[" * 100_000 + b"]" * 100_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-rss-mb", type=float, default=2500.0)
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="0 = no soak")
    parser.add_argument("--kills", type=int, default=5, help="kill -9 / restart cycles of the service")
    parser.add_argument("--pipeline-kills", type=int, default=3, help="random kills per pipeline step")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        good = build_small_index(root)
        live = root / "live"
        shutil.copytree(good, live)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(live, root, port)
        try:
            wait_until_up(base)
            httpx.post(f"{base}/search", json={"text": "warm up"}, timeout=120)
            started = peak_rss_mb(server.pid)  # model, index and one search: the baseline
            rows = run_suites(base, root)
            alive = httpx.get(f"{base}/health", timeout=30).status_code == 200
            peak = peak_rss_mb(server.pid)
            faults = [hot_swap_faults(base, live, good)]
            if args.soak_seconds:
                faults.append(soak(base, live, good, server.pid, args.soak_seconds))
        finally:
            server.terminate()
            server.wait(30)
        click_db = root / "ws" / "clicklog" / "clicks.sqlite"
        faults.append(service_kills(lambda: start_server(live, root, port), base, click_db, args.kills))
        faults += pipeline_kills(root, args.pipeline_kills)
    print(table(rows, peak))
    print(f"server RSS after start-up and one search: {started:.0f} MB\n")
    for row in faults:
        print(json.dumps(row))
    problems = judge(rows, faults, alive, peak, args.max_rss_mb)
    if problems:
        sys.exit("FAILED: " + "; ".join(problems))
    print(f"passed: 0 5xx, 0 failed requests in swaps, 0 answered queries lost, peak RSS {peak:.0f} MB")


def judge(rows: list[dict], faults: list[dict], alive: bool, peak: float, bound: float) -> list[str]:
    problems = [f"{r['suite']}: {r['5xx']} 5xx" for r in rows if r["5xx"]]
    problems += [f"{f['suite']}: {f['failed requests']} failed" for f in faults if f.get("failed requests")]
    problems += [f"{f['suite']}: {f['5xx']} 5xx" for f in faults if f.get("5xx")]
    for row in faults:
        if row.get("restore exit", 0) != 0 or row.get("swap", "swapped") != "swapped":
            problems.append(f"{row['suite']}: restore exit {row['restore exit']}, {row['swap']}")
        if "equal to uninterrupted" in row and not (
            row["equal to uninterrupted"] and not row["leftovers"] and row["versions still listed"]
        ):
            problems.append(f"{row['suite']}: {row}")
        if row.get("answered but not logged") or row.get("sqlite integrity", "ok") != "ok":
            problems.append(
                f"{row['suite']}: {row['answered but not logged']} lost, {row['sqlite integrity']}"
            )
    if not alive:
        problems.append("the server stopped answering")
    if peak > bound:
        problems.append(f"peak RSS {peak:.0f} MB > {bound:.0f} MB")
    return problems


def build_small_index(root: Path) -> Path:
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for number in range(24):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(images / f"img{number}.png")
    settings = Settings(home=root / "ws")
    build_folder_index(
        build_zeroshot_encoder(settings.model), images, root / "index", model="v0", settings=settings
    )
    return root / "index"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(index: Path, root: Path, port: int) -> subprocess.Popen:
    env = os.environ | {
        "IMAGESEARCH_HOME": str(root / "ws"),
        "IMAGESEARCH_SERVICE__ADMIN_TOKEN": "reliability-suite-token-0123456789",
        "IMAGESEARCH_SERVICE__RELOAD_POLL_SECONDS": "0.5",
    }
    command = [
        str(Path(sys.executable).parent / "imagesearch"),
        "serve",
        "--index",
        str(index),
        "--port",
        str(port),
    ]
    log = root.joinpath("server.log").open("w")
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)


def wait_until_up(base: str, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(1)
    raise SystemExit("the service did not start")


def run_suites(base: str, root: Path) -> list[dict]:
    stop = threading.Event()
    searching: Counter = Counter()
    clients = [threading.Thread(target=search_loop, args=(base, stop, searching)) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        rows = [
            summarise("fuzz (OpenAPI + bodies)", fuzz(base)),
            summarise("image bombs x8", bombs(base, root)),
        ]
    finally:
        stop.set()
        for client in clients:
            client.join()
    return [*rows, summarise("4 clients searching", searching)]


def search_loop(base: str, stop: threading.Event, seen: Counter) -> None:
    with httpx.Client(base_url=base, timeout=120) as client:
        while not stop.is_set():
            seen[client.post("/search", json={"text": "a noisy picture", "k": 5}).status_code] += 1


def fuzz(base: str) -> Counter:
    statuses: Counter = Counter()
    with httpx.Client(base_url=base, timeout=120) as client:
        schema = client.get("/openapi.json").json()
        for path, methods in schema["paths"].items():
            for method, operation in methods.items():
                url = path.replace("{image_id}", "x" * 64)
                for body in hostile_bodies(operation, schema):
                    statuses[send(client, method, url, json=body)] += 1
                for content, headers in whole_body_attacks():
                    statuses[send(client, method, url, content=content, headers=headers)] += 1
        statuses[send(client, "get", "/health", headers={"host": "rebinding.example"})] += 1
        statuses[send(client, "get", "/images/..%2F..%2Fetc%2Fpasswd")] += 1
    return statuses


def send(client: httpx.Client, method: str, url: str, **kwargs) -> int | str:
    try:
        return client.request(method.upper(), url, **kwargs).status_code
    except httpx.HTTPError as error:  # the server closed on us: counted apart from statuses
        return f"closed ({type(error).__name__})"


def hostile_bodies(operation: dict, schema: dict) -> list[object]:
    """A valid-looking body with one field at a time replaced by each hostile value of its type."""
    content = operation.get("requestBody", {}).get("content", {})
    body_schema = next(iter(content.values()), {}).get("schema")
    if body_schema is None:
        return []
    properties = resolve(body_schema, schema).get("properties", {})
    bodies = []
    for name, field in properties.items():
        kind = field_type(resolve(field, schema))
        bodies += [{name: value} for value in HOSTILE.get(kind, HOSTILE["string"])]
        bodies += [{name: value, "text": "cat"} for value in HOSTILE.get(kind, HOSTILE["string"])[:3]]
    return bodies


def resolve(node: dict, schema: dict) -> dict:
    if "$ref" in node:
        return resolve(schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]], schema)
    return node


def field_type(field: dict) -> str:
    for option in [field, *field.get("anyOf", [])]:
        if option.get("type") and option["type"] != "null":
            return option["type"]
    return "string"


def whole_body_attacks() -> list[tuple[bytes | object, dict]]:
    json_type = {"content-type": "application/json"}

    def endless():
        for _ in range(2000):
            yield b" " * 65536

    return [
        (DEEP, json_type),
        (b"[1, 2, 3]", json_type),
        (b'"just a string"', json_type),
        (b"{not json", json_type),
        (b"\xff\xfe\x00", json_type),
        (json.dumps({"text": "cat"}).encode(), {"content-type": "text/plain"}),
        (json.dumps({"text": "cat"}).encode(), {**json_type, "origin": "http://attacker.example"}),
        (b"x" * (17 * 1024 * 1024), json_type),
        (endless(), json_type),
        (
            b"--b\r\nContent-Disposition: form-data; name=image\r\n\r\n",
            {"content-type": "multipart/form-data; boundary=b"},
        ),
    ]


def bombs(base: str, root: Path) -> Counter:
    zoo = image_zoo(root)
    statuses: Counter = Counter()

    def upload(item: tuple[str, bytes]) -> int | str:
        name, data = item
        with httpx.Client(base_url=base, timeout=300) as client:
            return send(client, "post", "/search", files={"image": (name, data, "application/octet-stream")})

    with ThreadPoolExecutor(8) as pool:
        for status in pool.map(upload, [item for item in zoo.items() for _ in range(8)]):
            statuses[status] += 1
    return statuses


def image_zoo(root: Path) -> dict[str, bytes]:
    def png(image: Image.Image, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", **options)
        return buffer.getvalue()

    palette = Image.new("P", (6000, 6000))
    palette.putpalette([0, 0, 0, 255, 255, 255] * 128)
    small = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    good = png(small)
    text_bomb = Image.new("RGB", (64, 64))
    from PIL import PngImagePlugin

    chunks = PngImagePlugin.PngInfo()
    for number in range(8):
        chunks.add_text(f"k{number}", "x" * (1 << 20), zip=True)
    gif = io.BytesIO()
    frames = [Image.new("P", (512, 512), color) for color in range(300)]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    tiff = io.BytesIO()
    pages = [Image.new("L", (256, 256), value) for value in range(64)]
    pages[0].save(tiff, format="TIFF", save_all=True, append_images=pages[1:])
    corrupt = bytearray(good)
    corrupt[40] ^= 0xFF  # inside IHDR/IDAT: a CRC mismatch
    return {
        "sixteen_bit_6000.png": png(Image.new("I;16", (6000, 6000))),
        "palette_6000.png": png(palette, transparency=0),
        "one_bit_8000.png": png(Image.new("1", (8000, 8000))),
        "declared_30000.jpg": jpeg_declaring(30000, 30000),
        "frames_300.gif": gif.getvalue(),
        "pages_64.tiff": tiff.getvalue(),
        "text_chunks.png": png(text_bomb, pnginfo=chunks),
        "truncated.png": good[: len(good) // 2],
        "crc_broken.png": bytes(corrupt),
        "good.png": good,
    }


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header claims `width` x `height`."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"\xff\xc0")
    data[start + 5 : start + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def summarise(suite: str, statuses: Counter) -> dict:
    codes = Counter({str(code): count for code, count in statuses.items()})
    server_errors = sum(n for code, n in codes.items() if code.startswith("5") and code != "503")
    return {
        "suite": suite,
        "requests": sum(codes.values()),
        "2xx": sum(n for code, n in codes.items() if code.startswith("2")),
        "4xx": sum(n for code, n in codes.items() if code.startswith("4")),
        "503 (overload, by design)": codes.get("503", 0),
        "5xx": server_errors,
        "closed": sum(n for code, n in codes.items() if code.startswith("closed")),
        "statuses": dict(sorted(codes.items())),
    }


def table(rows: list[dict], peak: float) -> str:
    keys = ["suite", "requests", "2xx", "4xx", "503 (overload, by design)", "5xx", "closed", "statuses"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[key]) for key in keys) + " |" for row in rows]
    return "\n".join([*lines, "", f"server peak RSS (VmHWM): {peak:.0f} MB"])


if __name__ == "__main__":
    main()
