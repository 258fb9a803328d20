"""Open-loop load generator: sends search requests at a constant arrival rate, whatever the answers do.

A closed loop (N clients, each waiting for its answer) measures queueing, not capacity: when the
server slows, the clients slow with it and the latency they see hides the backlog. Here request i
is due at start + i / rate; its latency counts from that due time, not from when it was sent, so a
stalled server or a late client shows up in the percentiles (no coordinated omission).

Runs as its own process (bench_service.py starts it), one asyncio loop on one connection pool:

    python benchmarks/open_loop.py --url http://127.0.0.1:8000 --queries Q.jsonl --rate 100 --seconds 20

Each line of Q.jsonl is {"text": ...} or {"image": PATH}; prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from pathlib import Path

import aiohttp
import numpy as np


def request_body(query: dict) -> dict:
    """aiohttp arguments for one query (images as multipart uploads, read once up front)."""
    if "text" in query:
        return {"json": {"text": query["text"], "k": 10}}
    return {"image": Path(query["image"]).read_bytes(), "name": Path(query["image"]).name}


async def send(session: aiohttp.ClientSession, url: str, body: dict, due: float) -> tuple[float, int]:
    if "image" in body:
        form = aiohttp.FormData()
        form.add_field("image", body["image"], filename=body["name"])
        form.add_field("k", "10")
        arguments = {"data": form}
    else:
        arguments = body
    try:
        async with session.post(f"{url}/search", **arguments) as response:
            await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError):
        status = 0
    return (time.perf_counter() - due) * 1000, status


async def run(url: str, bodies: list[dict], rate: float, seconds: float, timeout: float) -> dict:
    count = max(1, int(rate * seconds))
    connector = aiohttp.TCPConnector(limit=0)  # as many connections as requests in flight
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        start = time.perf_counter() + 0.05
        tasks = []
        for i, body in zip(range(count), itertools.cycle(bodies)):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(session, url, body, due)))
        results = await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    latency = np.array([ms for ms, _ in results])
    failed = sum(status != 200 for _, status in results)
    return {
        "rate": rate,
        "sent": count,
        "failed": failed,
        "achieved_qps": (count - failed) / wall,
        "p50": float(np.percentile(latency, 50)),
        "p95": float(np.percentile(latency, 95)),
        "p99": float(np.percentile(latency, 99)),
        "max": float(latency.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="a request slower than this fails")
    args = parser.parse_args()
    queries = [json.loads(line) for line in args.queries.read_text().splitlines() if line.strip()]
    bodies = [request_body(query) for query in queries]
    print(json.dumps(asyncio.run(run(args.url, bodies, args.rate, args.seconds, args.timeout))))


if __name__ == "__main__":
    main()
