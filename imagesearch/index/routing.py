"""What of a routing encoder's vectors an index keeps (`models.routing`): an index of a collection
outside the training corpus's domain holds the anchored model's vectors. The decision and the block's
layout go into the manifest; a live update applies the base's."""

from __future__ import annotations

import numpy as np

from imagesearch.models.encoders import Encoder
from imagesearch.models.routing import block_layout, route_collection, without_block


def route_vectors(encoder: Encoder, vectors: np.ndarray) -> tuple[np.ndarray, dict]:
    """(the vectors an index of this collection holds, what its manifest records of the decision)."""
    routed, inside = route_collection(encoder, vectors)
    if inside is None:
        return vectors, {}
    if inside:
        return routed, {"specialist": "inside"}
    block, anchored_scale = block_layout(encoder)
    return routed, {
        "specialist": "outside",
        "zeroed_columns": [block.start, block.stop],
        "anchored_scale": anchored_scale,
    }


def as_base(vectors: np.ndarray, extra: dict) -> np.ndarray:
    """Vectors added to an index after its base, routed as the base was."""
    columns = extra.get("zeroed_columns")
    return without_block(vectors, slice(*columns), extra["anchored_scale"]) if columns else vectors
