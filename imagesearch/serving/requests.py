"""Turning an HTTP request into a validated query: body parsing, size limits, 4xx with a message."""

from __future__ import annotations

import base64
import binascii
from io import BytesIO
from pathlib import Path

from fastapi import HTTPException, Request
from PIL import Image, ImageOps
from pydantic import ValidationError

from imagesearch.common.images import DEFAULT_LIMITS, ImageRejected, open_rgb
from imagesearch.common.io import write_atomic
from imagesearch.serving.schemas import KnnRequest, SearchRequest
from imagesearch.serving.service import SearchService
from imagesearch.serving.types import Query
from imagesearch.settings import ServiceSettings


async def parse_search(request: Request, max_bytes: int) -> tuple[SearchRequest, bytes | None]:
    content_type = request.headers.get("content-type", "")
    upload = None
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=10)
        file = form.get("image")
        if file is None or isinstance(file, str):
            raise HTTPException(422, "multipart search needs a file field named 'image'")
        upload = await file.read(max_bytes + 1)
        if len(upload) > max_bytes:
            raise HTTPException(413, f"the image is larger than {max_bytes} bytes")
        fields = {key: value for key, value in form.items() if key != "image"}
        query = validated(fields)
        if any(getattr(query, name) is not None for name in ("text", "image_id", "embedding")):
            raise HTTPException(422, "give exactly one of text, image_id, embedding or an image file")
    else:
        try:
            body = await request.json()
        except ValueError as error:
            raise HTTPException(422, "the body must be JSON (or multipart with an 'image' file)") from error
        except RecursionError as error:
            raise HTTPException(400, "the JSON body is nested too deeply") from error
        query = validated(body)
        given = [name for name in ("text", "image_id", "embedding") if getattr(query, name) is not None]
        if len(given) != 1:
            raise HTTPException(422, "give exactly one of text, image_id or embedding")
    return query, upload


def validated(fields: object) -> SearchRequest:
    if not isinstance(fields, dict):
        raise HTTPException(422, "the body must be a JSON object")
    try:
        return SearchRequest.model_validate(fields)
    except ValidationError as error:
        raise _unprocessable(error) from error


def knn_request(raw: bytes) -> KnnRequest:
    try:
        return KnnRequest.model_validate_json(raw)
    except ValidationError as error:
        raise _unprocessable(error) from error


def _unprocessable(error: ValidationError) -> HTTPException:
    """A 422 naming each invalid field and why."""
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return HTTPException(422, problems or "the body must be a JSON object")


def base64_image(encoded: str, max_bytes: int) -> bytes:
    if len(encoded) > max_bytes * 4 // 3 + 4:
        raise HTTPException(413, f"the image is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as error:
        raise HTTPException(422, "image must be base64-encoded bytes") from error


def check_page(query: SearchRequest, config: ServiceSettings) -> None:
    """The limits of the service's settings, on every route (the schema holds only hard caps)."""
    if query.text is not None and len(query.text) > config.max_text_chars:
        raise HTTPException(
            422, f"the text has {len(query.text)} characters; the limit is {config.max_text_chars}"
        )
    if query.k > config.max_k:
        raise HTTPException(422, f"k must be at most {config.max_k}")
    if query.offset > config.max_offset:
        raise HTTPException(422, f"offset must be at most {config.max_offset}")


def prepare(
    service: SearchService, query: SearchRequest, upload: bytes | None, timings: dict[str, float]
) -> Query:
    if upload is not None:
        return service.image_query(upload, timings)
    if query.text is not None:
        return service.text_query(query.text)
    if query.image_id is not None:
        return service.similar_query(query.image_id)
    return service.vector_query(query.embedding or [])


def cached_thumbnail(path: Path, image_id: str, side: int, cache: Path) -> Path:
    """The thumbnail file of a catalog image, made once (decoded reduced) and remade only when the
    source file is newer than it. Ids are hex content hashes, so the cache name cannot leave `cache`."""
    cached = cache / f"{image_id}-{side}.png"
    try:
        if cached.stat().st_mtime_ns >= path.stat().st_mtime_ns:
            return cached
    except FileNotFoundError:
        pass
    return write_atomic(cached, lambda staging: staging.write_bytes(make_thumbnail(path, side)))


def make_thumbnail(path: Path, side: int) -> bytes:
    try:
        image = open_rgb(path, DEFAULT_LIMITS, reduce_to=side).rgb
    except ImageRejected as error:
        raise HTTPException(422, f"the catalog image cannot be read ({error.reason})") from error
    buffer = BytesIO()
    ImageOps.contain(image, (side, side), Image.Resampling.BICUBIC).save(buffer, format="PNG")
    return buffer.getvalue()
