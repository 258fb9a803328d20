"""Encoder throughput at batch 1 and 32, with the time split and ratios to a raw forward pass.

For images: decode + preprocess (our shared path) vs the forward pass, and our forward vs the bare
timm backbone forward on the same tensors (peer), with and without channels-last. For texts:
tokenize + forward vs the bare transformer forward. Images come from the default corpus.

    .venv/bin/python benchmarks/bench_encoders.py [--images 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from imagesearch.models.encoders import build_trained_encoder, build_zeroshot_encoder
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


if __name__ == "__main__":
    main()
