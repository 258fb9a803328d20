"""The command line's combined-query syntax: `a red car + ./photo.png - snow`, `2:cat - 0.5:dog`.

Terms are separated by a `+` or `-` between spaces; a term may start with a weight and a colon.
A term naming an existing file is that image, `id:<catalog id>` is "more like" that image, anything
else is text.
"""

from __future__ import annotations

import re
from pathlib import Path

from imagesearch.serving.schemas import MAX_TERMS, TermIn

SEPARATOR = re.compile(r"(?:^|\s+)([+-])\s+")
WEIGHT = re.compile(r"^(\d+(?:\.\d*)?|\.\d+):(?=\S)")


def parse_query(query: str) -> tuple[list[TermIn], dict[str, bytes]]:
    """(terms, the bytes of the image files they name, by upload name)."""
    pieces = SEPARATOR.split(" " + query.strip() if query.strip()[:1] in "+-" else query.strip())
    signed = [("+", pieces[0]), *zip(pieces[1::2], pieces[2::2], strict=True)]
    terms, uploads = [], {}
    for sign, piece in signed:
        piece = piece.strip()
        if not piece:
            continue
        weight = 1.0
        if match := WEIGHT.match(piece):
            weight, piece = float(match[1]), piece[match.end() :]
        weight = -weight if sign == "-" else weight
        path = Path(piece).expanduser()
        if piece.startswith("id:"):
            terms.append(TermIn(image_id=piece[3:], weight=weight))
        elif path.is_file():
            name = f"file{len(uploads)}"
            uploads[name] = path.read_bytes()
            terms.append(TermIn(upload=name, weight=weight))
        else:
            terms.append(TermIn(text=piece, weight=weight))
    if not terms:
        raise ValueError("the query is empty")
    if len(terms) > MAX_TERMS:
        raise ValueError(f"a query has at most {MAX_TERMS} terms")
    return terms, uploads
