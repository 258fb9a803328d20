"""What of a routing encoder's vectors an index keeps. An encoder whose specialist block is routed per
collection (`MODEL__SPECIALIST_ROUTING=collection`) decides once per indexed collection whether it
looks like the training corpus (`Encoder.route_collection`); an index of a collection outside holds
the anchored model's vectors (the block taken out), so every query ranks it by the anchored model.
The decision and the block's layout go into the manifest; a live update applies the base's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from imagesearch.models.encoders import Encoder, without_block

ROUTING_MARKER = "routing.json"  # in a model's embeddings folder: its encoder routes


def route_vectors(encoder: Encoder, vectors: np.ndarray) -> tuple[np.ndarray, dict]:
    """(the vectors an index of this collection holds, what its manifest records of the decision)."""
    routed, inside = encoder.route_collection(vectors)
    if inside is None:
        return vectors, {}
    if inside:
        return routed, {"specialist": "inside"}
    block, anchored_scale = encoder.block_layout()
    return routed, {
        "specialist": "outside",
        "zeroed_columns": [block.start, block.stop],
        "anchored_scale": anchored_scale,
    }


def as_base(vectors: np.ndarray, extra: dict) -> np.ndarray:
    """Vectors added to an index after its base, routed as the base was."""
    columns = extra.get("zeroed_columns")
    return without_block(vectors, slice(*columns), extra["anchored_scale"]) if columns else vectors


def mark_routing(encoder: Encoder, embeddings: Path) -> None:
    """Note in a model's embeddings folder that an index of them must be routed (the index step then
    loads the encoder; other models' indexes never need it)."""
    if encoder.routes:
        embeddings.mkdir(parents=True, exist_ok=True)
        (embeddings / ROUTING_MARKER).write_text(
            json.dumps({"specialist_columns": str(encoder.specialist_columns())})
        )


def routes(embeddings: Path) -> bool:
    return (embeddings / ROUTING_MARKER).is_file()
