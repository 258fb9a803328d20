"""Encoder throughput at batch 1 and 32, with the time split and ratios to a raw forward pass.

For images: decode + preprocess (our shared path) vs the forward pass, and our forward vs the bare
timm backbone forward on the same tensors (peer), with and without channels-last. For texts:
tokenize + forward vs the bare transformer forward. Images come from the default corpus. Then each
encoder on torch vs on ONNX Runtime (its exported graphs), with the smallest cosine between the two.

    .venv/bin/python benchmarks/bench_encoders.py [--images 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import onnxruntime
import torch

from imagesearch.models.builders import build_trained_encoder, build_zeroshot_encoder
from imagesearch.models.encoders import Encoder
from imagesearch.settings import Settings

TEXTS = [
    "a red apple on a table",
    "black and white cat",
    "road sign with an arrow",
    "a sailing boat at sea",
    "people playing football",
    "a smiling sun",
    "computer keyboard",
    "a bunch of flowers",
]


def best_of(repeats: int, function: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def image_rows(encoder, name: str, paths: list[Path], repeats: int) -> list[tuple]:
    return [image_row(encoder, name, batch, paths, repeats) for batch in (1, 32)]


def image_row(encoder, name: str, batch: int, paths: list[Path], repeats: int) -> tuple:
    batches = [paths[i : i + batch] for i in range(0, 32, batch)]
    tensors = [encoder.preprocess(b) for b in batches]
    prep = best_of(repeats, lambda: [encoder.preprocess(b) for b in batches])
    ours = best_of(repeats, lambda: [encoder.encode_pixels(t) for t in tensors])
    # peer: the bare timm network as timm builds it (NCHW); v0 reads its classifier, two-tower its features
    bare = getattr(encoder.image_model, "classifier", None) or encoder.image_model.backbone
    peer = best_of(repeats, lambda: bare_forward(bare, tensors, torch.contiguous_format))
    nhwc = best_of(repeats, lambda: bare_forward(bare, tensors, torch.channels_last))
    total = prep + ours
    return (name, "images", batch, 32 / total, prep / total, ours / peer, peer / nhwc)


def bare_forward(
    model: torch.nn.Module, tensors: list[torch.Tensor], memory_format: torch.memory_format
) -> None:
    model.to(memory_format=memory_format)
    with torch.inference_mode():
        for tensor in tensors:
            model(tensor.contiguous(memory_format=memory_format))
    model.to(memory_format=torch.channels_last)  # as the encoder keeps it


def text_rows(encoder, name: str, repeats: int) -> list[tuple]:
    return [text_row(encoder, name, batch, repeats) for batch in (1, 32)]


def text_row(encoder, name: str, batch: int, repeats: int) -> tuple:
    chunks = [(TEXTS * 8)[i : i + batch] for i in range(0, 32, batch)]
    tokens = [encoder.tokenize(chunk) for chunk in chunks]
    ours = best_of(repeats, lambda: [encoder.encode_texts(chunk, batch_size=batch) for chunk in chunks])
    tokenize = best_of(repeats, lambda: [encoder.tokenize(chunk) for chunk in chunks])

    def bare() -> None:
        with torch.inference_mode():
            for batch_tokens in tokens:
                encoder.text_model.transformer(**batch_tokens)

    peer = best_of(repeats, bare)
    return (name, "texts", batch, 32 / ours, tokenize / ours, ours / peer, float("nan"))


def onnx_rows(encoder, name: str, paths: list[Path], repeats: int) -> list[tuple]:
    """The same encoder on torch and on ONNX Runtime (its graphs as registration exports them)."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = encoder.save(Path(scratch) / "encoder")
        encoder.export_onnx(folder)
        onnx = Encoder.load(folder, "cpu", runtime="onnx")
    rows = []
    for batch in (1, 32):
        pixels = encoder.preprocess(paths[:batch])
        texts = (TEXTS * 4)[:batch]
        for kind, run_torch, run_onnx in (
            ("texts", partial(encoder.encode_texts, texts), partial(onnx.encode_texts, texts)),
            ("images", partial(encoder.encode_pixels, pixels), partial(onnx.encode_pixels, pixels)),
        ):
            cosine = float((run_torch() * run_onnx()).sum(axis=1).min())
            torch_s, onnx_s = best_of(repeats, run_torch), best_of(repeats, run_onnx)
            rows.append((name, kind, batch, torch_s * 1000, onnx_s * 1000, torch_s / onnx_s, cosine))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = Settings()
    paths = sorted(p for p in settings.default_corpus_root.rglob("*.png") if not p.is_symlink())[
        : args.images
    ]
    if len(paths) < 32:
        raise SystemExit("default corpus missing: run `imagesearch corpus fetch`")
    encoders = {
        "v0 zero-shot": build_zeroshot_encoder(settings.model),
        "two-tower": build_trained_encoder(settings.model),
    }
    rows = []
    for name, encoder in encoders.items():
        rows += image_rows(encoder, name, paths, args.repeats) + text_rows(encoder, name, args.repeats)

    device = next(iter(encoders.values())).device
    print(f"encoder benchmark on {device} ({torch.get_num_threads()} threads), best of {args.repeats}")
    print(
        f"{'encoder':<14}{'input':<8}{'batch':>6}{'items/s':>10}{'prep share':>12}"
        f"{'ours/raw fwd':>14}{'NHWC speedup':>14}"
    )
    for name, kind, batch, rate, share, ratio, nhwc in rows:
        nhwc_text = "" if nhwc != nhwc else f"{nhwc:.2f}x"
        print(f"{name:<14}{kind:<8}{batch:>6}{rate:>10.1f}{share:>11.0%}{ratio:>13.2f}x{nhwc_text:>14}")
    print("prep share: decode+preprocess (images) or tokenisation (texts) as a share of end-to-end time;")
    print(
        "ours/raw fwd: our forward (channels-last, projection, normalisation) over timm's bare NCHW forward;"
    )
    print("NHWC speedup: bare forward contiguous / channels-last (>1 means channels-last is faster).")

    print(f"\ntorch vs ONNX Runtime ({', '.join(onnxruntime.get_available_providers())})")
    print(
        f"{'encoder':<14}{'input':<8}{'batch':>6}{'torch ms':>10}{'onnx ms':>10}{'speedup':>9}{'min cos':>10}"
    )
    for name, encoder in encoders.items():
        for row in onnx_rows(encoder, name, paths, max(args.repeats, 10)):
            name, kind, batch, torch_ms, onnx_ms, speedup, cosine = row
            print(
                f"{name:<14}{kind:<8}{batch:>6}{torch_ms:>10.1f}{onnx_ms:>10.1f}{speedup:>8.2f}x{cosine:>10.6f}"
            )


if __name__ == "__main__":
    main()
