"""Routing per collection: an encoder whose specialist block is routed (`MODEL__SPECIALIST_ROUTING=
collection`) decides once for each indexed collection whether it looks like the training corpus.
Inside, its vectors stay as stored; outside, they become the anchored model's: the block taken out,
and the raw block made and weighed as chosen for collections outside on validation (`plain` as
stored, or `sqrt_centered`). The decision reads only the vectors' raw block, so an index build can make it
without the pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from imagesearch.models.encoders import Encoder
from imagesearch.models.towers import PLAIN, SQRT_CENTERED


@dataclass(frozen=True, slots=True)
class OutsideLayout:
    """How an index of a collection outside makes its vectors from the stored ones."""

    block: slice  # the specialist block's columns (its filler included): zeroed
    anchored_scale: float  # the anchored columns before it: scaled back up by the block's share
    raw: slice  # the raw block's columns
    raw_mean: np.ndarray | None  # sqrt_centered outside: the training views' mean rooted block
    raw_scale: float  # the outside weight of the raw block over the stored one


def route_collection(encoder: Encoder, vectors: np.ndarray) -> tuple[np.ndarray, bool | None]:
    """(a collection's image vectors as its index holds them, whether it is inside the training
    corpus's domain; None = this encoder does not route)."""
    if not encoder.routes:
        return vectors, None
    layout = outside_layout(encoder)
    inside = encoder.image_model.router.inside(torch.from_numpy(np.ascontiguousarray(vectors[:, layout.raw])))
    return (vectors if inside else without_block(vectors, layout)), inside


def outside_layout(encoder: Encoder) -> OutsideLayout:
    """Raises ValueError for a stored raw block that is not `plain`: the router and `without_block`
    read the stored block as the pooled features themselves (training keeps it plain when it routes)."""
    tower, spec = encoder.image_model, encoder.spec
    if spec.raw_transform != PLAIN:
        raise ValueError(
            f"a routed encoder must store its raw block plain, this one stores it {spec.raw_transform!r}: "
            "retrain it, or set MODEL__SPECIALIST_ROUTING=image"
        )
    weight = float(tower.projection.specialist.weight)
    rooted = spec.outside_raw_transform == SQRT_CENTERED
    stored = float(tower.raw_feature_weight)
    return OutsideLayout(
        encoder.specialist_columns(),
        float(np.sqrt(1.0 + weight * weight)),
        slice(encoder.dim - encoder.raw_width(), encoder.dim),
        tower.router.raw_mean.cpu().numpy() if rooted else None,
        spec.outside_raw_weight / stored if spec.outside_raw_weight and stored else 1.0,
    )


def without_block(vectors: np.ndarray, layout: OutsideLayout) -> np.ndarray:
    """Routed image vectors as the anchored model alone gives them (a copy, unit rows): the block's
    columns zeroed, the anchored columns before it scaled back up, and the raw block remade from the
    stored `plain` one (`sqrt_centered` outside, when chosen) at the outside weight."""
    out = np.array(vectors, dtype=np.float32, copy=True)
    out[:, layout.block] = 0.0
    out[:, : layout.block.start] *= layout.anchored_scale
    if layout.raw_mean is not None:
        raw = out[:, layout.raw]
        rooted = _unit(np.sqrt(np.clip(raw, 0.0, None)))
        out[:, layout.raw] = _unit(rooted - layout.raw_mean) * np.linalg.norm(raw, axis=1, keepdims=True)
    out[:, layout.raw] *= layout.raw_scale
    return _unit(out)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
