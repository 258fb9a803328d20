"""Search service latency, HTTP end to end: a real uvicorn server on 127.0.0.1 and this process as the load.

First, before any server starts, the peer of every ratio: a bare torch forward of the serving model's
text tower (one short query) and image tower (one image). Then, per index: the workspace index as
`make demo` built it ("workspace"), and 10k / 100k / 1M vectors: the workspace index's real vectors
topped up with draws from a Gaussian mixture fitted to them (as in bench_ann.py), built by the same
`build_tuned_index` (RAM tier 1/8 of float32, re-rank tier 1/4). Synthetic rows point at real corpus
files, so every result can be served. The server is `imagesearch serve --index DIR` in its own
process, logging to a scratch click log.

Text queries are corpus titles; image queries upload real corpus files (multipart). Closed loop: each
cell sends `--requests` queries from 1 or 20 concurrent clients (each a kept-alive connection of
the standard library's HTTP client, bodies encoded before the clock starts) and reports p50 / p95 /
p99 of the client-side latency, QPS, and the mean time split the server reports per request (decode,
encode, ANN, keywords (looked up on a thread of their own, beside the encode), re-rank, the rest of
the handler) plus what is left of the client-side time (HTTP, serialisation, queueing behind other
clients). Open loop: open_loop.py, a separate process,
sends a constant arrival rate, rising step by step, and the highest rate whose p99 stays <= 100 ms
with no failure is the sustained capacity. Warm start: the first and the tenth text query of a
freshly started server (the same text both times), with the server's own time for each;
`--warm-starts N` measures only that, on N fresh servers over the workspace index. `--paired N`
measures only one client's text queries and image uploads on the workspace index, each in turn with a
torch forward of the same text or image, so that the ratio holds on a machine whose speed drifts
between runs. The server runs
without its text-vector cache (`SERVICE__TEXT_CACHE_SIZE=0`): the query lists repeat, and every query
should pay its encode.

    make demo   # once: the corpus, its embeddings and the workspace index
    .venv/bin/python benchmarks/bench_service.py [--sizes workspace,10000,100000,1000000] [--requests 200]
    .venv/bin/python benchmarks/bench_service.py --warm-starts 5 --out /tmp/warm.json
    .venv/bin/python benchmarks/bench_service.py --paired 300 --out /tmp/paired.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd

from imagesearch.catalog.build import read_catalog
from imagesearch.embeddings.store import model_key, read_model_embeddings
from imagesearch.index.build import build_tuned_index
from imagesearch.index.store import MANIFEST_FILE, load_index
from imagesearch.models.encoders import Encoder
from imagesearch.models.registry import load_encoder
from imagesearch.settings import PROJECT_ROOT, IndexSettings, ModelSettings, Settings

sys.path.insert(0, str(Path(__file__).parent))
from bench_ann import fitted_mixture, sample_mixture

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
CLI = PROJECT_ROOT / ".venv" / "bin" / "imagesearch"
STAGES = ("decode", "queue", "encode", "ann", "keywords", "rerank")
BESIDE_ENCODE = ("keywords",)  # looked up on their own thread while the query is encoded
OPEN_LOOP = Path(__file__).with_name("open_loop.py")
INDEX_LAYOUT = "refine"  # part of the cached index folder's name: a new layout builds anew
P99_GOAL_MS = 100.0


def real_vectors(settings: Settings, model: str | None) -> tuple[str, np.ndarray, pd.DataFrame]:
    """(model, vectors, ids + paths) of the catalog: the workspace index's, or the embedding store's
    for `model` (a registered model the backfill embedded the catalog with, e.g. v0's)."""
    real = load_index(settings.search_index_dir)
    if model is None:
        return real.manifest.model, np.asarray(real.vectors, dtype=np.float32), real.ids[["id", "path"]]
    catalog = read_catalog(settings.catalog_path)
    vectors, missing = read_model_embeddings(settings.embeddings_dir / model_key(model), catalog["id"])
    if not len(vectors):
        raise SystemExit(f"no embeddings of {model} in {settings.embeddings_dir}: backfill it first")
    return model, vectors, catalog.loc[~catalog["id"].isin(missing), ["id", "path"]].reset_index(drop=True)


def sized_index(size: int, settings: Settings, model: str | None = None) -> Path:
    """The catalog's real vectors (the workspace index's, or `model`'s) topped up to `size` with
    mixture draws; built once, then reused."""
    model, vectors, ids = real_vectors(settings, model)
    folder = RESULTS / f"service-index-{size}-{model.replace('/', '_').replace(':', '')}-{INDEX_LAYOUT}"
    if (folder / MANIFEST_FILE).is_file():
        return folder
    vectors, ids = vectors[:size], ids.iloc[:size]
    extra = size - len(vectors)
    if extra > 0:
        # no name holds the draws: the 7.7 GB of 1M x 1,921 go once the concatenation has them
        vectors = np.concatenate([vectors, sample_mixture(fitted_mixture(vectors), extra, seed=size)])
        paths = ids["path"].to_numpy()
        ids = pd.concat(
            [
                ids,
                pd.DataFrame(
                    {"id": [f"synthetic-{i}" for i in range(extra)], "path": np.resize(paths, extra)}
                ),
            ],
            ignore_index=True,
        )
    print(f"  building the {size:,}-vector index in {folder} ...", flush=True)
    budget_mb = size * vectors.shape[1] * 4 / 8 / 2**20  # RAM tier 1/8 of float32, re-rank tier 1/4
    config = IndexSettings(memory_budget_mb=budget_mb, rerank_budget_mb=2 * budget_mb)
    build_tuned_index(vectors, ids, folder, model=model, config=config)
    return folder


def served_index(size: str, settings: Settings, model: str | None) -> Path:
    """The index a `--sizes` entry names: 'workspace' (what `make demo` built) or a vector count."""
    return settings.search_index_dir if size == "workspace" else sized_index(int(size), settings, model)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(index: Path, scratch: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = os.environ | {
        "IMAGESEARCH_CLICK_LOG_URL": f"sqlite:///{scratch / 'clicks.sqlite'}",
        # every query is encoded: the query lists repeat (closed loop past 200 requests, every
        # open-loop step), and the text cache would answer the repeats without the encoder
        "IMAGESEARCH_SERVICE__TEXT_CACHE_SIZE": "0",
    }
    server = subprocess.Popen(
        [str(CLI), "serve", "--index", str(index), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(scratch / "server.log", "w"),  # noqa: SIM115 (lives as long as the server)
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited: {(scratch / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.5)
    server.kill()
    sys.exit("the server did not answer /health within 5 minutes")


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """One search request's body and headers, encoded before the clock starts (client-side work)."""

    body: bytes
    headers: dict[str, str]


def prepared_request(**arguments) -> PreparedRequest:
    request = httpx.Request("POST", "http://127.0.0.1/search", **arguments)
    headers = {"content-type": request.headers["content-type"]}
    return PreparedRequest(request.read(), headers)


def sampled_titles(settings: Settings, count: int = 200) -> list[str]:
    titles = read_catalog(settings.catalog_path)["title"].dropna().drop_duplicates()
    return titles.sample(count, random_state=0).tolist()


def text_queries(settings: Settings, count: int = 200) -> list[PreparedRequest]:
    return [prepared_request(json={"text": title, "k": 10}) for title in sampled_titles(settings, count)]


def sampled_images(settings: Settings, count: int = 50) -> list[Path]:
    return [Path(p) for p in read_catalog(settings.catalog_path).sample(count, random_state=1)["path"]]


def image_request(path: Path) -> PreparedRequest:
    return prepared_request(files={"image": (path.name, path.read_bytes())}, data={"k": "10"})


def image_queries(settings: Settings, count: int = 50) -> list[PreparedRequest]:
    return [image_request(path) for path in sampled_images(settings, count)]


class Client:
    """One kept-alive connection of the standard library's HTTP client: on this machine httpx adds
    ~0.7 ms of its own per request (an empty route: 1.09 vs 0.39 ms), which is the client's cost,
    not the service's."""

    def __init__(self, url: str) -> None:
        address = urlsplit(url)
        self.connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)

    def search(self, query: PreparedRequest) -> tuple[float, dict]:
        started = time.perf_counter()
        self.connection.request("POST", "/search", query.body, query.headers)
        response = self.connection.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {payload[:300]!r}")
        return elapsed, json.loads(payload)["timings_ms"]

    def close(self) -> None:
        self.connection.close()


def load(url: str, queries: list[PreparedRequest], requests: int, clients: int) -> dict:
    """`requests` queries spread over `clients` threads, each with its own connection."""
    plan = [queries[i % len(queries)] for i in range(requests)]
    shards = [plan[c::clients] for c in range(clients)]

    def run_client(shard: list[PreparedRequest]) -> list[tuple[float, dict]]:
        client = Client(url)
        try:
            return [client.search(query) for query in shard]
        finally:
            client.close()

    run_client(queries[:10])  # warm
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        measured = [row for rows in pool.map(run_client, shards) for row in rows]
    wall = time.perf_counter() - started
    latency = np.array([row[0] for row in measured])
    split = {stage: float(np.mean([row[1].get(stage, 0.0) for row in measured])) for stage in STAGES}
    server_total = float(np.mean([row[1]["total"] for row in measured]))
    # what the worker waited for the keywords after its ANN search, if anything, is in the rest
    in_sequence = sum(ms for stage, ms in split.items() if stage not in BESIDE_ENCODE)
    split["handler rest"] = server_total - in_sequence
    split["http + queue"] = float(latency.mean()) - server_total
    return {
        "batch": float(np.mean([row[1]["batch"] for row in measured])),
        "p50": float(np.percentile(latency, 50)),
        "p95": float(np.percentile(latency, 95)),
        "p99": float(np.percentile(latency, 99)),
        "qps": requests / wall,
        "split": split,
    }


def torch_forward_ms(settings: Settings, model: str | None = None, repeats: int = 50) -> dict[str, float]:
    """The peer every ratio is taken against: a bare torch forward of the serving model's text tower
    for one short query and of its image tower for one preprocessed image (p50, this process, before
    any server starts, torch's default threads)."""
    encoder = served_torch_encoder(settings, model)
    image = read_catalog(settings.catalog_path)["path"].iloc[0]
    pixels = encoder.preprocess([Path(image)])
    return {
        "text": median_ms(lambda: encoder.encode_texts(["a red car"]), repeats),
        "image": median_ms(lambda: encoder.encode_pixels(pixels), repeats),
    }


def torch_encoder(reference: str, settings: Settings) -> Encoder:
    """The registered model `reference` on torch: the peer every query-time ratio is set against."""
    return load_encoder(reference, settings.model_copy(update={"model": ModelSettings(runtime="torch")}))


def served_torch_encoder(settings: Settings, model: str | None = None) -> Encoder:
    """`model` (default: the workspace index's), run by torch (the peer's runtime)."""
    return torch_encoder(model or load_index(settings.search_index_dir).manifest.model, settings)


def paired(settings: Settings, pairs: int, kind: str) -> dict:
    """One client on the workspace index, each query's HTTP latency taken in turn with a bare torch
    forward of the same query in this process (torch, pause, HTTP, pause): on a machine whose speed
    drifts from minute to minute, both sides of the ratio see the same minutes. `kind` 'text': a
    title, against the text tower's forward; 'image': a catalog file uploaded, against the image
    tower's forward of its preprocessed pixels (the peer does not decode). The forward is the peer's
    tight loop in small (the median of 3 after 2 untimed): a single forward after the pause runs from
    cold caches and sleeping threads, ~1.5x slower, which would flatter the ratio."""
    encoder = served_torch_encoder(settings)
    if kind == "text":
        titles = sampled_titles(settings)
        requests = [prepared_request(json={"text": title, "k": 10}) for title in titles]
        forwards = [lambda text=title: encoder.encode_texts([text]) for title in titles]
    else:
        paths = sampled_images(settings)
        requests = [image_request(path) for path in paths]
        pixels = [encoder.preprocess([path]) for path in paths]
        forwards = [lambda image=image: encoder.encode_pixels(image) for image in pixels]
    with tempfile.TemporaryDirectory() as scratch:
        server, url = start_server(settings.search_index_dir, Path(scratch))
        client = Client(url)
        try:
            torch_ms, http_ms, server_ms = [], [], []
            for turn in range(pairs + 10):  # the first 10 turns warm both sides
                forward = median_ms(forwards[turn % len(forwards)], repeats=3, warm_up=2)
                time.sleep(0.01)  # torch's idle threads stop spinning before the request
                latency, split = client.search(requests[turn % len(requests)])
                time.sleep(0.01)
                if turn >= 10:
                    torch_ms.append(forward), http_ms.append(latency), server_ms.append(split["total"])
        finally:
            client.close()
            server.terminate()
            server.wait(30)
    torch_p50, http_p50 = float(np.median(torch_ms)), float(np.median(http_ms))
    return {
        "pairs": pairs,
        "torch_p50": torch_p50,
        "http_p50": http_p50,
        "http_p99": float(np.percentile(http_ms, 99)),
        "server_p50": float(np.median(server_ms)),
        "ratio_of_p50s": http_p50 / torch_p50,
        "median_pair_ratio": float(np.median(np.array(http_ms) / np.array(torch_ms))),
    }


def median_ms(function: Callable[[], object], repeats: int, warm_up: int = 5) -> float:
    """Median wall time of `function` in ms, after `warm_up` untimed calls."""
    for _ in range(warm_up):
        function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return float(np.median(samples))


def first_and_tenth(url: str, queries: list[PreparedRequest], swapped: bool = False) -> dict[str, float]:
    """Latency of the first and the tenth text query a freshly started server answers, each encoded
    (no cache), with the server's own time for each (a difference can be placed inside or outside
    it). The tenth is a text the server has not seen: repeating the first would find its keyword
    postings and index lists in caches no start-up warm-up fills for every query. `swapped` puts
    the tenth's text first and the first's tenth, so over alternate starts each text is measured in
    both places (query costs differ by more than warming does)."""
    first, tenth = (queries[9], queries[0]) if swapped else (queries[0], queries[9])
    client = Client(url)
    try:
        answered = [client.search(query) for query in [first, *queries[1:9], tenth]]
    finally:
        client.close()
    (first_ms, first_split), (tenth_ms, tenth_split) = answered[0], answered[9]
    return {
        "first_ms": first_ms,
        "tenth_ms": tenth_ms,
        "first_server_ms": first_split["total"],
        "tenth_server_ms": tenth_split["total"],
        "first_split_ms": first_split,
        "tenth_split_ms": tenth_split,
        "swapped": swapped,
    }


def warm_starts(index: Path, queries: list[PreparedRequest], starts: int) -> list[dict[str, float]]:
    """First and tenth text query of `starts` freshly started servers on `index`, the two texts
    swapped on every other start."""
    measured = []
    for start in range(starts):
        with tempfile.TemporaryDirectory() as scratch:
            server, url = start_server(index, Path(scratch))
            try:
                measured.append(first_and_tenth(url, queries, swapped=start % 2 == 1))
            finally:
                server.terminate()
                server.wait(30)
        print(f"  start {start + 1}: {_warm_line(measured[-1])}", flush=True)
    return measured


def _warm_line(warm: dict[str, float]) -> str:
    return (
        f"first {warm['first_ms']:.1f} ms (server {warm['first_server_ms']:.1f}), "
        f"tenth {warm['tenth_ms']:.1f} ms (server {warm['tenth_server_ms']:.1f})"
        + (", texts swapped" if warm["swapped"] else "")
    )


def open_loop(url: str, queries_file: Path, rates: list[float], seconds: float) -> tuple[float, list[dict]]:
    """Rising constant arrival rates from a separate load-generator process; the highest rate whose
    p99 stays <= P99_GOAL_MS with no failed request, and every step measured."""
    sustained, steps = 0.0, []
    for rate in rates:
        command = [sys.executable, str(OPEN_LOOP), "--url", url, "--queries", str(queries_file)]
        result = subprocess.run(
            [*command, "--rate", str(rate), "--seconds", str(seconds)],
            capture_output=True,
            text=True,
            check=True,
        )
        step = json.loads(result.stdout.strip().splitlines()[-1])
        steps.append(step)
        print(
            f"    open loop {rate:6.0f}/s: p50 {step['p50']:7.1f}  p99 {step['p99']:7.1f} ms  "
            f"failed {step['failed']}",
            flush=True,
        )
        if step["p99"] > P99_GOAL_MS or step["failed"]:
            break
        sustained = rate
    return sustained, steps


def write_queries(queries: list[dict], path: Path) -> Path:
    path.write_text("\n".join(json.dumps(query) for query in queries))
    return path


def report(rows: list[dict], peer: dict[str, float], capacity: list[dict]) -> None:
    print(f"\nbare torch forward (one query): text {peer['text']:.1f} ms, image {peer['image']:.1f} ms")
    print(
        "\n| vectors | index | query | clients | p50 ms | p95 ms | p99 ms | p50 / torch forward | QPS | "
        + " | ".join(f"{stage} ms" for stage in (*STAGES, "handler rest", "http + queue"))
        + " |"
    )
    print("|" + "---|" * (11 + len(STAGES)))
    for row in rows:
        split = " | ".join(f"{value:.1f}" for value in row["split"].values())
        ratio = f"{row['p50'] / peer[row['query']]:.2f}x" if row["clients"] == 1 else ""
        print(
            f"| {row['vectors']:,} | {row['factory']} | {row['query']} | {row['clients']} | "
            f"{row['p50']:.1f} | {row['p95']:.1f} | {row['p99']:.1f} | {ratio} | {row['qps']:.1f} | {split} |"
        )
    print(
        f"\n| vectors | query | open-loop QPS sustained at p99 <= {P99_GOAL_MS:.0f} ms "
        "| first / tenth query ms |"
    )
    print("|---|---|---|---|")
    for row in capacity:
        print(f"| {row['vectors']:,} | {row['query']} | {row['sustained_qps']:.0f} | {row['warm']} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="workspace,10000,100000,1000000")
    parser.add_argument("--requests", type=int, default=200, help="queries per closed-loop cell")
    parser.add_argument("--clients", default="1,20")
    parser.add_argument("--text-rates", default="50,100,150,200,300,400,500")
    parser.add_argument("--image-rates", default="10,20,30,40,60,80")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each open-loop step")
    parser.add_argument("--out", type=Path, default=RESULTS / "service.json", help="raw results (JSON)")
    parser.add_argument(
        "--warm-starts",
        type=int,
        default=0,
        help="only the first / tenth text query of N fresh servers (on the one index --sizes names)",
    )
    parser.add_argument(
        "--vectors-of",
        help="sized indexes from this registered model's catalog embeddings (e.g. models:/imagesearch/1) "
        "instead of the workspace index's",
    )
    parser.add_argument(
        "--paired", type=int, default=0, help="only N queries of each kind, each in turn with a torch forward"
    )
    parser.add_argument("--paired-kinds", default="text,image", help="what --paired measures")
    args = parser.parse_args()
    if args.vectors_of and "workspace" in args.sizes.split(","):
        parser.error("--vectors-of is also the peer's model: give it sized indexes only (--sizes 1000000)")
    settings = Settings()
    if args.paired:
        kinds = args.paired_kinds.split(",")
        measured = {f"paired_{kind}": paired(settings, args.paired, kind) for kind in kinds}
        print(json.dumps(measured, indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(measured, indent=2))
        return
    if args.warm_starts:
        sizes = args.sizes.split(",")
        if len(sizes) != 1:
            parser.error("--warm-starts runs on one index: give --sizes workspace or e.g. --sizes 1000000")
        index = served_index(sizes[0], settings, args.vectors_of)
        measured = warm_starts(index, text_queries(settings), args.warm_starts)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"warm_starts": measured}, indent=2))
        return
    queries = {"text": text_queries(settings), "image": image_queries(settings)}
    peer = torch_forward_ms(settings, args.vectors_of)  # the model the sized indexes serve
    rates = {"text": args.text_rates, "image": args.image_rates}
    rows, capacity = [], []
    for name in args.sizes.split(","):
        index = served_index(name, settings, args.vectors_of)
        manifest = load_index(index).manifest
        size = manifest.count
        with tempfile.TemporaryDirectory() as scratch:
            server, url = start_server(index, Path(scratch))
            try:
                warm = first_and_tenth(url, queries["text"])
                print(f"  warm start: {_warm_line(warm)}", flush=True)
                for kind, batch in queries.items():
                    for clients in map(int, args.clients.split(",")):
                        row = load(url, batch, args.requests, clients)
                        row |= {
                            "vectors": size,
                            "factory": manifest.factory,
                            "query": kind,
                            "clients": clients,
                        }
                        rows.append(row)
                        print(
                            f"  {size:>9,} {kind:5} x{clients:<2}  p50 {row['p50']:6.1f}  "
                            f"p99 {row['p99']:6.1f} ms  {row['qps']:6.1f} QPS",
                            flush=True,
                        )
                    plan = write_queries(open_loop_queries(settings, kind), Path(scratch) / f"{kind}.jsonl")
                    rising = [float(rate) for rate in rates[kind].split(",")]
                    sustained, steps = open_loop(url, plan, rising, args.seconds)
                    capacity.append(
                        {
                            "vectors": size,
                            "query": kind,
                            "sustained_qps": sustained,
                            "steps": steps,
                            "warm": f"{warm['first_ms']:.1f} / {warm['tenth_ms']:.1f}"
                            if kind == "text"
                            else "",
                            "warm_start": warm if kind == "text" else None,
                        }
                    )
            finally:
                server.terminate()
                server.wait(30)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"torch_forward_ms": peer, "closed_loop": rows, "open_loop": capacity}, indent=2)
    )
    report(rows, peer, capacity)


def open_loop_queries(settings: Settings, kind: str) -> list[dict]:
    """The same queries as the closed loop, as the load generator's JSON lines."""
    catalog = read_catalog(settings.catalog_path)
    if kind == "text":
        titles = catalog["title"].dropna().drop_duplicates().sample(200, random_state=0)
        return [{"text": title} for title in titles]
    return [{"image": path} for path in catalog.sample(50, random_state=1)["path"]]


if __name__ == "__main__":
    main()
