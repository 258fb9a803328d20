"""ONNX Runtime's execution providers side by side on one registered model's graphs, through the
project's own `OnnxTowers`: the CPU provider at 2 intra-op threads (the serving machine's cores) and
at one per core, and CUDA's when the installed build has it (`onnxruntime-gpu`). Rows: one short
query and one image at a time (p50 / p99 ms), batches (items/s), and the smallest cosine between each
provider's vectors and the 2-thread CPU provider's.

Two steps, so the measuring machine needs neither the registry nor the corpus:

    .venv/bin/python benchmarks/bench_onnx_providers.py prepare --model champion --out bench-onnx
    python benchmarks/bench_onnx_providers.py run bench-onnx [--json providers.json]

`prepare` copies the model's two graphs and writes real inputs: corpus titles tokenized by the model's
tokenizer and corpus images through the shared preprocessing. With `--redraw-weights` each large float
weight is stored as its shape and statistics only, and `run` draws it again (normal with the tensor's
mean and std, clipped to its range): the same graph and kernels in a few hundred kB, for a machine the
weights cannot be copied to. Timings hold; the vectors are then not the model's, so the agreement
column compares providers on the same redrawn weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from imagesearch.models.onnx_runtime import (
    CPU,
    IMAGE_GRAPH,
    ONNX_FOLDER,
    TEXT_GRAPH,
    OnnxTowers,
    providers_for,
)

INPUTS = "inputs.npz"
REDRAWN = "redraw:"  # an initializer's doc string when its values were dropped by --redraw-weights
KEPT_ELEMENTS = 4096  # smaller weights (norms, biases, shapes) travel as they are
IMAGE_BATCHES = (32, 128)
TEXT_BATCH = 256


def prepare(model: str, out: Path, texts: int, images: int, redraw_weights: bool) -> None:
    from bench_service import sampled_images, sampled_titles  # the service benchmark's queries

    from imagesearch.models.registry import encoder_folder, load_encoder
    from imagesearch.settings import Settings

    settings = Settings()
    folder = encoder_folder(model, settings)  # downloaded once: the encoder loads from the same folder
    graphs = folder / ONNX_FOLDER
    encoder = load_encoder(str(folder), settings)
    out.mkdir(parents=True, exist_ok=True)
    for name in (IMAGE_GRAPH, TEXT_GRAPH):
        if redraw_weights:
            strip_weights(graphs / name, out / name)
        else:
            shutil.copyfile(graphs / name, out / name)
    titles = sampled_titles(settings, texts)
    tokens = [encoder.tokenize([title]) for title in titles]
    pixels = encoder.preprocess(sampled_images(settings, images)).numpy()
    np.savez(
        out / INPUTS,
        ids=np.concatenate([t["input_ids"][0].numpy() for t in tokens]).astype(np.int32),
        lengths=np.array([t["input_ids"].shape[1] for t in tokens], np.int32),
        pixels=pixels.astype(np.float16),  # half the bytes; widened back before the runs
    )
    (out / "model.json").write_text(json.dumps({"model": model, "redrawn": redraw_weights}))
    print(f"wrote {out}: {len(titles)} titles, {len(pixels)} images, graphs from {graphs}")


def strip_weights(source: Path, target: Path) -> None:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(source))
    for tensor in graph.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype != np.float32 or values.size < KEPT_ELEMENTS:
            continue
        summaries = {"mean": np.mean, "std": np.std, "min": np.min, "max": np.max}
        stats = {name: float(summary(values)) for name, summary in summaries.items()}
        dims = list(tensor.dims)
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.doc_string = REDRAWN + json.dumps({**stats, "dims": dims})
    onnx.save(graph, str(target))


def restore_weights(source: Path, target: Path, seed: int = 0) -> None:
    import onnx
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    graph = onnx.load(str(source))
    for tensor in graph.graph.initializer:
        if not tensor.doc_string.startswith(REDRAWN):
            continue
        stats = json.loads(tensor.doc_string[len(REDRAWN) :])
        values = rng.normal(stats["mean"], stats["std"], stats["dims"]).clip(stats["min"], stats["max"])
        tensor.CopyFrom(numpy_helper.from_array(values.astype(np.float32), tensor.name))
    onnx.save(graph, str(target))


def percentiles(times_ms: list[float]) -> tuple[float, float]:
    ordered = sorted(times_ms)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def timed(function: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    result = function()
    return (time.perf_counter() - started) * 1000, result


def best_rate(function: Callable[[], object], items: int, repeats: int = 3) -> float:
    function()  # a new batch shape: the provider picks its kernels on the first call
    return items / min(timed(function)[0] for _ in range(repeats)) * 1000


def padded(queries: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(q) for q in queries)
    ids = np.zeros((len(queries), width), np.int64)
    mask = np.zeros_like(ids)
    for row, query in enumerate(queries):
        ids[row, : len(query)], mask[row, : len(query)] = query, 1
    return ids, mask


def measure(towers: OnnxTowers, queries: list[np.ndarray], pixels: np.ndarray, rounds: int) -> dict:
    one_query = [partial(towers.encode_tokens, q[None], np.ones((1, len(q)), np.int64)) for q in queries]
    for run in one_query[:30]:
        run()
    text_runs = [timed(run) for run in one_query]
    images = [pixels[i : i + 1] for i in range(len(pixels))]
    for image in images[:8]:
        towers.encode_pixels(image)
    image_runs = [timed(partial(towers.encode_pixels, image)) for _ in range(rounds) for image in images]
    ids, mask = padded((queries * (TEXT_BATCH // len(queries) + 1))[:TEXT_BATCH])
    row = {
        "providers": towers.providers,
        "text_ms": percentiles([ms for ms, _ in text_runs]),
        "image_ms": percentiles([ms for ms, _ in image_runs]),
        f"text_batch{TEXT_BATCH}_per_s": best_rate(lambda: towers.encode_tokens(ids, mask), TEXT_BATCH),
    }
    for batch in IMAGE_BATCHES:
        tiled = np.ascontiguousarray(np.resize(pixels, (batch, *pixels.shape[1:])))
        row[f"image_batch{batch}_per_s"] = best_rate(lambda tiled=tiled: towers.encode_pixels(tiled), batch)
    text_vectors = np.concatenate([v for _, v in text_runs])
    row["vectors"] = (text_vectors, np.concatenate([v for _, v in image_runs[: len(images)]]))
    return row


def smallest_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def run(folder: Path, rounds: int, json_path: Path | None) -> None:
    import onnxruntime

    graphs = folder / "graphs"
    graphs.mkdir(exist_ok=True)
    for name in (IMAGE_GRAPH, TEXT_GRAPH):
        restore_weights(folder / name, graphs / name)
    data = np.load(folder / INPUTS)
    queries = np.split(data["ids"].astype(np.int64), np.cumsum(data["lengths"])[:-1])
    pixels = data["pixels"].astype(np.float32)
    configs = [("cpu, 2 threads", [CPU], 2), ("cpu, one thread per core", [CPU], 0)]
    cuda = providers_for("cuda")
    if cuda is not None:
        configs.append(("cuda", cuda, 0))
    rows = {}
    for name, providers, threads in configs:
        rows[name] = measure(OnnxTowers(graphs, providers, threads), queries, pixels, rounds)
    reference = rows[configs[0][0]]["vectors"]
    for row in rows.values():
        text, image = row.pop("vectors")
        row["min_cosine_text"] = smallest_cosine(text, reference[0])
        row["min_cosine_image"] = smallest_cosine(image, reference[1])
    report = {
        "model": json.loads((folder / "model.json").read_text()),
        "onnxruntime": onnxruntime.__version__,
        "available_providers": onnxruntime.get_available_providers(),
        "cuda_for_the_project": cuda,
        "machine": machine(),
        "texts": len(queries),
        "images": len(pixels),
        "rows": rows,
    }
    print_table(report)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))


def machine() -> dict:
    import os

    described = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    try:
        import torch

        if torch.cuda.is_available():
            described["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return described


def print_table(report: dict) -> None:
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
    header = ["provider", "text p50/p99 ms", "image p50/p99 ms", f"text b{TEXT_BATCH}/s"]
    header += [f"image b{b}/s" for b in IMAGE_BATCHES] + ["min cos text", "min cos image"]
    print(" | ".join(header))
    for name, row in report["rows"].items():
        cells = [name, "{:.2f} / {:.2f}".format(*row["text_ms"]), "{:.2f} / {:.2f}".format(*row["image_ms"])]
        cells += [f"{row[f'text_batch{TEXT_BATCH}_per_s']:.0f}"]
        cells += [f"{row[f'image_batch{b}_per_s']:.0f}" for b in IMAGE_BATCHES]
        cells += [f"{row['min_cosine_text']:.6f}", f"{row['min_cosine_image']:.6f}"]
        print(" | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("prepare", help="copy a model's graphs and write real inputs")
    made.add_argument("--model", default="champion")
    made.add_argument("--out", type=Path, required=True)
    made.add_argument("--texts", type=int, default=300)
    made.add_argument("--images", type=int, default=32)
    made.add_argument("--redraw-weights", action="store_true")
    measured = commands.add_parser("run", help="time every available provider on a prepared folder")
    measured.add_argument("folder", type=Path)
    measured.add_argument("--rounds", type=int, default=5, help="passes over the images, one at a time")
    measured.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    if arguments.command == "prepare":
        prepare(arguments.model, arguments.out, arguments.texts, arguments.images, arguments.redraw_weights)
    else:
        run(arguments.folder, arguments.rounds, arguments.json)


if __name__ == "__main__":
    main()
