"""Turning an HTTP request into a validated query: body parsing, size limits, 4xx with a message."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field, replace
from io import BytesIO
from pathlib import Path

from fastapi import HTTPException, Request
from PIL import Image, ImageOps
from pydantic import ValidationError

from imagesearch.common.images import DEFAULT_LIMITS, ImageRejected, open_rgb
from imagesearch.common.io import write_atomic
from imagesearch.serving.ranking import KEYWORD
from imagesearch.serving.schemas import MAX_TERMS, KnnRequest, SearchRequest, TermIn
from imagesearch.serving.service import SearchService
from imagesearch.serving.types import BadQuery, PageRequest, Query
from imagesearch.settings import ServiceSettings


@dataclass(frozen=True, slots=True)
class ParsedSearch:
    query: SearchRequest
    terms: list[TermIn]
    uploads: dict[str, bytes]  # multipart file field -> bytes
    file_names: dict[str, str] = field(default_factory=dict)  # multipart file field -> its file name

    @property
    def needs_decoding(self) -> bool:
        return any(term.upload is not None or term.image is not None for term in self.terms)

    def describe(self) -> str:
        """The query as one line for the click log, in the CLI's syntax."""
        return describe_terms(self.terms)


async def parse_search(request: Request, max_bytes: int) -> ParsedSearch:
    """A JSON body (SearchRequest), or multipart: image files plus either a `query` field holding the
    JSON (whose terms name the files by field: {"upload": "image"}) or plain k/offset/... fields
    with one file `image` (the query is that image)."""
    content_type = request.headers.get("content-type", "")
    uploads: dict[str, bytes] = {}
    file_names: dict[str, str] = {}
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=MAX_TERMS, max_fields=16)
        fields = {}
        for key, value in form.multi_items():
            if isinstance(value, str):
                fields[key] = value
                continue
            uploads[key] = await value.read(max_bytes + 1)
            file_names[key] = Path(value.filename or key).name[:200]
            if len(uploads[key]) > max_bytes:
                raise HTTPException(413, f"the image is larger than {max_bytes} bytes")
        query = validated(_json(fields["query"]) if "query" in fields else fields)
        if not uploads and not query.terms:
            raise HTTPException(422, "multipart search needs a file field named 'image'")
    else:
        try:
            body = await request.json()
        except ValueError as error:
            raise HTTPException(422, "the body must be JSON (or multipart with an 'image' file)") from error
        except RecursionError as error:
            raise HTTPException(400, "the JSON body is nested too deeply") from error
        query = validated(body)
    return ParsedSearch(query, _terms_of(query, uploads), uploads, file_names)


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise HTTPException(422, "the multipart field 'query' must hold the JSON of a search") from error


def _terms_of(query: SearchRequest, uploads: dict[str, bytes]) -> list[TermIn]:
    try:
        terms = query.all_terms()
    except ValueError as error:
        raise HTTPException(422, str(error)) from error
    if not terms and uploads.keys() == {"image"}:  # the classic upload: the query is that image
        terms = [TermIn(upload="image")]
    if not terms and uploads:
        raise HTTPException(
            422, "multipart search needs a file field named 'image', or a 'query' field naming the files"
        )
    if not terms:
        raise HTTPException(422, "give terms, or exactly one of text, image_id or embedding")
    named = {term.upload for term in terms if term.upload is not None}
    if named - uploads.keys():
        raise HTTPException(422, f"no uploaded file for the terms {sorted(named - uploads.keys())}")
    if uploads.keys() - named:
        raise HTTPException(422, f"uploaded files {sorted(uploads.keys() - named)} are in no term")
    return terms


def describe_terms(terms: list[TermIn]) -> str:
    parts = []
    for number, term in enumerate(terms):
        sign = "-" if term.weight < 0 else "+"
        weight = "" if abs(term.weight) == 1 else f"{abs(term.weight):g}:"
        parts.append(f"{'' if number == 0 and sign == '+' else sign + ' '}{weight}{term_label(term)}")
    return " ".join(parts)


def term_label(term: TermIn) -> str:
    if term.text is not None:
        return term.text
    if term.image_id is not None:
        return f"image:{term.image_id}"
    if term.upload is not None:
        return f"upload:{term.upload}"
    return "image" if term.image is not None else "embedding"


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


def page_request(
    query: SearchRequest, terms: list[TermIn], service: SearchService, config: ServiceSettings
) -> PageRequest:
    """The page asked for, within the service's limits; the filters as the rows they keep."""
    if query.text is not None and len(query.text) > config.max_text_chars:
        raise BadQuery(f"the text has {len(query.text)} characters; the limit is {config.max_text_chars}")
    if query.k > config.max_k:
        raise BadQuery(f"k must be at most {config.max_k}")
    if query.offset > config.max_offset:
        raise BadQuery(f"offset must be at most {config.max_offset}")
    mode = query.mode or config.mode
    if mode == KEYWORD and not any(term.text and term.weight > 0 for term in terms):
        raise BadQuery("keyword mode needs a text term with a positive weight")
    filters = query.filters.as_filters() if query.filters else None
    mask = service.index.metadata.mask(filters) if filters and filters.active else None
    diversity = config.diversity if query.diversity is None else query.diversity
    return PageRequest(query.k, query.offset, diversity, query.dedup, mask, query.min_score, mode, query.sort)


def prepare(service: SearchService, parsed: ParsedSearch, timings: dict[str, float], max_bytes: int) -> Query:
    """Each term validated (and decoded, for images) into what the worker encodes."""
    terms = []
    for term in parsed.terms:
        if term.text is not None:
            made = service.text_query(term.text)
        elif term.image_id is not None:
            made = service.similar_query(term.image_id)
        elif term.embedding is not None:
            made = service.vector_query(term.embedding)
        else:
            data = parsed.uploads[term.upload] if term.upload else base64_image(term.image, max_bytes)
            made = service.image_query(data, timings)
        label = parsed.file_names.get(term.upload) or term_label(term)
        terms.append(replace(made.terms[0], weight=term.weight, label=label))
    return Query(tuple(terms))


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
