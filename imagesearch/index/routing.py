"""What of a routing encoder's vectors an index keeps (`models.routing`): an index of a collection
outside the training corpus's domain holds the anchored model's vectors. The decision and the block's
layout go into the manifest; a live update applies the base's."""

from __future__ import annotations

import numpy as np

from imagesearch.models.encoders import Encoder
from imagesearch.models.routing import outside_layout, route_collection, without_block


def route_vectors(encoder: Encoder, vectors: np.ndarray) -> tuple[np.ndarray, dict]:
    """(the vectors an index of this collection holds, what its manifest records of the decision)."""
    routed, inside = route_collection(encoder, vectors)
    if inside is None:
        return vectors, {}
    if inside:
        return routed, {"specialist": "inside"}
    layout = outside_layout(encoder)
    return routed, {
        "specialist": "outside",
        "zeroed_columns": [layout.block.start, layout.block.stop],
        "anchored_scale": layout.anchored_scale,
        "outside_raw": encoder.spec.outside_raw_transform,
        "outside_raw_scale": layout.raw_scale,
    }


def as_base(encoder: Encoder | None, vectors: np.ndarray, extra: dict) -> np.ndarray:
    """Vectors added to an index after its base, routed as the base was (`encoder`: the base's
    model, needed only when the base is outside)."""
    if extra.get("specialist") != "outside":
        return vectors
    if encoder is None:
        raise ValueError("an index routed outside needs its model's encoder to add vectors")
    return without_block(vectors, outside_layout(encoder))
