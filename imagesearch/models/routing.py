"""Routing per collection: an encoder whose specialist block is routed (`MODEL__SPECIALIST_ROUTING=
collection`) decides once for each indexed collection whether it looks like the training corpus.
Inside, its vectors keep the block; outside, the block is taken out, so every query - text or image -
ranks that collection by the anchored model alone. The decision reads only the vectors' raw block,
so an index build can make it without the pixels."""

from __future__ import annotations

import numpy as np
import torch

from imagesearch.models.encoders import Encoder


def route_collection(encoder: Encoder, vectors: np.ndarray) -> tuple[np.ndarray, bool | None]:
    """(a collection's image vectors as its index holds them, whether it is inside the training
    corpus's domain; None = this encoder does not route)."""
    if not encoder.routes:
        return vectors, None
    raw = np.ascontiguousarray(vectors[:, -encoder.raw_width() :], dtype=np.float32)
    inside = encoder.image_model.router.inside(torch.from_numpy(raw))
    return (vectors if inside else without_block(vectors, *block_layout(encoder))), inside


def block_layout(encoder: Encoder) -> tuple[slice, float]:
    """(the specialist block's columns, how much the anchored columns before it are scaled down by
    the block's share of the projection's norm): what `without_block` needs."""
    weight = float(encoder.image_model.projection.specialist.weight)
    return encoder.specialist_columns(), float(np.sqrt(1.0 + weight * weight))


def without_block(vectors: np.ndarray, block: slice, anchored_scale: float) -> np.ndarray:
    """Routed image vectors with the specialist block taken out: its columns zeroed and the anchored
    columns before it scaled back up, so each row is the vector the anchored model alone (the same
    raw block) would give (a copy, unit rows)."""
    out = np.array(vectors, dtype=np.float32, copy=True)
    out[:, block] = 0.0
    out[:, : block.start] *= anchored_scale
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
