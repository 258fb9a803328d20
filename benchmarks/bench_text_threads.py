"""ONNX Runtime thread settings for one short text query: intra-op threads (1, 2) x spinning (off, on)
x text graph (float32, int8), on an idle machine and with one core kept busy by another process (what
the service's event loop and a load generator do to it), beside a bare torch forward in this process.

Why it exists: the service runs the text graph at ONNX Runtime's default thread count with spinning
off (`onnx_runtime.session_options`); this measures that choice instead of assuming it.

    .venv/bin/python benchmarks/bench_text_threads.py [--model champion]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime

from imagesearch.models.onnx_runtime import CPU, TEXT_GRAPH, quantize_text_graph, session_options
from imagesearch.models.registry import pin_reference
from imagesearch.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))
from bench_service import median_ms, torch_encoder

QUERY = ["a red car"]
REPEATS = 300
THREADS = (1, 2)
SPINNING = (False, True)


def _burn(stop) -> None:
    """Keep one core busy until told to stop."""
    while not stop.is_set():
        sum(range(10_000))


def _session(graph: Path, threads: int, spinning: bool) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(graph), session_options(threads, spinning), providers=[CPU])


def measure(graphs: dict[str, Path], feed: dict[str, np.ndarray]) -> dict[str, float]:
    rows = {}
    for precision, graph in graphs.items():
        for threads in THREADS:
            for spinning in SPINNING:
                session = _session(graph, threads, spinning)
                key = f"{precision}, {threads} thread(s), spinning {'on' if spinning else 'off'}"
                rows[key] = median_ms(lambda: session.run(None, feed), REPEATS)  # noqa: B023 (called here)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="champion")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/text_threads.json"))
    args = parser.parse_args()
    settings = Settings()
    model = pin_reference(args.model, settings)
    encoder = torch_encoder(model, settings)
    tokens = encoder.tokenizer(QUERY, return_tensors="np")
    feed = {name: tokens[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = encoder.export_onnx(encoder.save(Path(scratch) / "encoder"))
        graphs = {"float32": folder / TEXT_GRAPH, "int8": quantize_text_graph(folder / TEXT_GRAPH, folder)}
        results["idle"] = {"torch": median_ms(lambda: encoder.encode_texts(QUERY), REPEATS)}
        results["idle"] |= measure(graphs, feed)
        stop = multiprocessing.Event()
        burner = multiprocessing.Process(target=_burn, args=(stop,), daemon=True)
        burner.start()
        try:
            results["one core busy"] = {"torch": median_ms(lambda: encoder.encode_texts(QUERY), REPEATS)}
            results["one core busy"] |= measure(graphs, feed)
        finally:
            stop.set()
            burner.join()
    print(f"model {model}; one short query through the text graph, median ms")
    for condition, rows in results.items():
        print(f"  {condition}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": model, "query": QUERY[0], "median_ms": results}, indent=2))


if __name__ == "__main__":
    main()
