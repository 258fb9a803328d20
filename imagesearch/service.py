"""The HTTP search service: `create_app(settings)` builds the FastAPI app; routes delegate to SearchService.

The lifespan loads the model and the index it was built with once into `app.state`; requests read
the current pair through one attribute, so a later swap replaces both at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.resources import files
from io import BytesIO
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imagesearch.catalog import content_id
from imagesearch.clicklog import ClickLog, UnknownQuery
from imagesearch.images import DEFAULT_LIMITS, ImageRejected, open_rgb
from imagesearch.index import index_fingerprint
from imagesearch.serving import Answer, BadQuery, PageRequest, Query, SearchService
from imagesearch.settings import ServiceSettings, Settings
from imagesearch.telemetry import Telemetry


class SearchRequest(BaseModel):
    """A JSON query: a text, a catalog image id ("more like this"), or a raw embedding."""

    text: str | None = Field(default=None, description="text query")
    image_id: str | None = Field(default=None, description="catalog image to find more like")
    embedding: list[float] | None = Field(default=None, description="a vector in the model's space")
    k: int = Field(default=10, ge=1, description="results per page (at most service.max_k)")
    offset: int = Field(default=0, ge=0)
    diversity: float | None = Field(default=None, ge=0, le=1, description="MMR lambda; 1.0 = off")
    dedup: bool = True


class ResultOut(BaseModel):
    id: str
    score: float
    rank: int
    caption: str
    image_url: str
    thumbnail_url: str


class SearchResponse(BaseModel):
    query_id: str
    model_version: str
    results: list[ResultOut]
    timings_ms: dict[str, float]


class KnnRequest(BaseModel):
    """The body clip-retrieval's ClipClient posts; its safety/aesthetic/mclip options do not apply here."""

    model_config = ConfigDict(extra="ignore")
    text: str | None = None
    image: str | None = Field(default=None, description="base64-encoded image bytes")
    image_url: str | None = None
    embedding_input: list[float] | None = None
    modality: str = "image"
    num_images: int = Field(default=40, ge=1)
    deduplicate: bool = True


class KnnResult(BaseModel):
    id: str
    similarity: float
    url: str
    caption: str


class ReloadRequest(BaseModel):
    index_dir: str | None = Field(default=None, description="default: the index the service started with")


class ClickEvent(BaseModel):
    type: Literal["click"] = "click"
    query_id: str = Field(min_length=1, max_length=64)
    rank: int = Field(ge=1)


def current_service(request: Request) -> SearchService:
    """The model + index pair serving now (read once per request, so a swap never mixes two pairs)."""
    return request.app.state.service


Service = Annotated[SearchService, Depends(current_service)]


def create_app(
    settings: Settings, *, index_dir: Path | None = None, service: SearchService | None = None
) -> FastAPI:
    """The app over `index_dir` (default: the workspace's index); `service` skips loading (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = service or await run_in_threadpool(SearchService.from_index, settings, index_dir)
        app.state.clicks = ClickLog(settings.effective_click_log_url)
        app.state.telemetry = Telemetry()
        app.state.swapper = Swapper(app.state)
        watcher = None
        if config.reload_poll_seconds and service is None:
            folder = index_dir or settings.search_index_dir
            watcher = asyncio.create_task(
                _watch_index(app.state, settings, folder, config.reload_poll_seconds)
            )
        yield
        if watcher is not None:
            watcher.cancel()

    app = FastAPI(title="imagesearch", version="0.1.0", lifespan=lifespan)
    config = settings.service
    index_dir_default = index_dir
    app.state.admin_token = config.admin_token
    app.state.settings = settings

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        request.app.state.telemetry.observe(
            getattr(route, "path", "unmatched"), response.status_code, time.perf_counter() - started
        )
        return response

    page_html = files("imagesearch").joinpath("web/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def search_page() -> str:
        """The search page: text box, image drop, results grid, "more like this", click logging."""
        return page_html

    @app.post("/search", response_model=SearchResponse)
    async def search(request: Request, service: Service) -> SearchResponse:
        """JSON body (SearchRequest) or multipart upload (field `image`, plus k/offset/diversity/dedup)."""
        started = time.perf_counter()
        query, upload = await _parse_search(request, config.max_upload_bytes)
        diversity = config.diversity if query.diversity is None else query.diversity
        page = PageRequest(query.k, query.offset, diversity, query.dedup)
        answer, query_id = await _answer(request, service, query, upload, page)
        timings = answer.timings_ms
        results = [
            ResultOut(
                id=r.id,
                score=r.score,
                rank=r.rank,
                caption=service.caption_of(r.id),
                image_url=f"/images/{r.id}",
                thumbnail_url=f"/images/{r.id}?thumbnail=true",
            )
            for r in answer.results
        ]
        timings["total"] = _ms(started)
        return SearchResponse(
            query_id=query_id, model_version=answer.model_version, results=results, timings_ms=timings
        )

    @app.post("/knn-service", response_model=list[KnnResult])
    async def knn_service(request: Request, service: Service) -> list[KnnResult]:
        """clip-retrieval's ClipClient protocol: `ClipClient(url=".../knn-service", indice_name=...)`.

        Body: KnnRequest as JSON. ClipClient sends it without a content-type, so it is parsed as JSON
        whatever the header says.
        """
        body = _knn_request(await request.body())
        if body.image_url:
            raise HTTPException(
                422, "image_url is not fetched (the service makes no outbound requests): send image"
            )
        if body.modality != "image":
            raise HTTPException(422, f"modality {body.modality!r}: this service indexes images only")
        upload = _base64_image(body.image, config.max_upload_bytes) if body.image else None
        query = _validated(
            {
                "text": body.text,
                "embedding": body.embedding_input,
                "k": body.num_images,
                "dedup": body.deduplicate,
            }
        )
        if upload is None and (query.text is None) == (query.embedding is None):
            raise HTTPException(422, "give exactly one of text, image or embedding_input")
        page = PageRequest(query.k, 0, config.diversity, query.dedup)
        answer, _ = await _answer(request, service, query, upload, page)
        base = str(request.base_url).rstrip("/")
        return [
            KnnResult(
                id=r.id, similarity=r.score, url=f"{base}/images/{r.id}", caption=service.caption_of(r.id)
            )
            for r in answer.results
        ]

    @app.get("/images/{image_id}")
    async def image(image_id: str, service: Service, thumbnail: bool = False) -> Response:
        """A catalog image by id (the original, or a thumbnail): ids only, never a path."""
        path = service.path_of(image_id)
        if path is None or not path.is_file():
            raise HTTPException(404, f"no catalog image with id {image_id!r}")
        if not thumbnail:
            return FileResponse(path)
        return Response(
            await run_in_threadpool(_thumbnail, path, config.thumbnail_side), media_type="image/png"
        )

    @app.post("/events", status_code=201)
    async def event(click: ClickEvent, request: Request) -> dict:
        """A click on the result shown at `rank` for `query_id` (impressions are logged by /search)."""
        try:
            image_id = await run_in_threadpool(request.app.state.clicks.log_click, click.query_id, click.rank)
        except UnknownQuery as error:
            raise HTTPException(404, str(error)) from error
        return {"query_id": click.query_id, "rank": click.rank, "image_id": image_id}

    @app.post("/admin/reload", status_code=202, dependencies=[Depends(require_admin)])
    async def reload(request: Request, body: ReloadRequest | None = None) -> dict:
        """Load the index (and its model) in the background, then swap the pair in atomically.

        Requests in flight finish on the pair they started with; a load that fails keeps the old pair.
        """
        swapper: Swapper = request.app.state.swapper
        index_dir = Path(body.index_dir) if body and body.index_dir else index_dir_default
        started = swapper.start(lambda: SearchService.from_index(settings, index_dir))
        if not started:
            raise HTTPException(409, "a reload is already running")
        return {"status": "loading", "serving": request.app.state.service.model_version}

    @app.get("/admin/reload", dependencies=[Depends(require_admin)])
    async def reload_status(request: Request) -> dict:
        return request.app.state.swapper.status(request.app.state.service.model_version)

    @app.get("/health")
    async def health(service: Service) -> dict:
        return {"status": "ok", "model_version": service.model_version, "vectors": service.index.index.ntotal}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> str:
        """Prometheus text format: request counts and latency histograms per route and status."""
        return request.app.state.telemetry.render()

    return app


async def _watch_index(state, settings: Settings, folder: Path, every: float) -> None:
    """Swap in the index folder's new build (and the model its manifest names) when it changes.

    The pipeline rebuilds the index after a new champion is promoted; the folder is replaced whole, so
    a changed manifest digest means a complete new index. A failed load is retried only after the
    folder changes again.
    """
    tried = state.service.fingerprint
    while True:
        await asyncio.sleep(every)
        current = await run_in_threadpool(index_fingerprint, folder)
        if current is None or current == tried:
            continue
        if state.swapper.start(lambda: SearchService.from_index(settings, folder)):
            tried = current


async def _answer(
    request: Request, service: SearchService, query: SearchRequest, upload: bytes | None, page: PageRequest
) -> tuple[Answer, str]:
    """prepare (validate, decode) -> encode + search on the worker -> log the impressions."""
    _check_page(query, request.app.state.settings.service)
    prepared: dict[str, float] = {}
    try:
        ready = await run_in_threadpool(_prepare, service, query, upload, prepared)
    except BadQuery as error:
        raise HTTPException(422, str(error)) from error
    try:
        answer: Answer = await run_in_threadpool(service.answer, ready, page)
    except TimeoutError as error:  # queued past SERVICE__ANSWER_TIMEOUT_S: overloaded
        raise HTTPException(503, "the search service is overloaded; retry shortly") from error
    answer.timings_ms = {**prepared, **answer.timings_ms}
    query_id = await run_in_threadpool(
        request.app.state.clicks.log_query,
        [(r.id, r.score) for r in answer.results],
        model_version=answer.model_version,
        query_text=query.text,
        query_image_hash=content_id(upload) if upload else query.image_id,
    )
    return answer, query_id


async def _parse_search(request: Request, max_bytes: int) -> tuple[SearchRequest, bytes | None]:
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
        query = _validated(fields)
    else:
        try:
            body = await request.json()
        except ValueError as error:
            raise HTTPException(422, "the body must be JSON (or multipart with an 'image' file)") from error
        query = _validated(body)
        given = [name for name in ("text", "image_id", "embedding") if getattr(query, name) is not None]
        if len(given) != 1:
            raise HTTPException(422, "give exactly one of text, image_id or embedding")
    return query, upload


def _validated(fields: object) -> SearchRequest:
    if not isinstance(fields, dict):
        raise HTTPException(422, "the body must be a JSON object")
    try:
        return SearchRequest.model_validate(fields)
    except ValidationError as error:
        raise _unprocessable(error) from error


def _knn_request(raw: bytes) -> KnnRequest:
    try:
        return KnnRequest.model_validate_json(raw)
    except ValidationError as error:
        raise _unprocessable(error) from error


def _unprocessable(error: ValidationError) -> HTTPException:
    """A 422 naming each invalid field and why."""
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return HTTPException(422, problems or "the body must be a JSON object")


def _base64_image(encoded: str, max_bytes: int) -> bytes:
    if len(encoded) > max_bytes * 4 // 3 + 4:
        raise HTTPException(413, f"the image is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as error:
        raise HTTPException(422, "image must be base64-encoded bytes") from error


def _check_page(query: SearchRequest, config: ServiceSettings) -> None:
    if query.k > config.max_k:
        raise HTTPException(422, f"k must be at most {config.max_k}")
    if query.offset > config.max_offset:
        raise HTTPException(422, f"offset must be at most {config.max_offset}")


def _prepare(
    service: SearchService, query: SearchRequest, upload: bytes | None, timings: dict[str, float]
) -> Query:
    if upload is not None:
        return service.image_query(upload, timings)
    if query.text is not None:
        return service.text_query(query.text)
    if query.image_id is not None:
        return service.similar_query(query.image_id)
    return service.vector_query(query.embedding or [])


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _thumbnail(path, side: int) -> bytes:
    try:
        image = open_rgb(path, DEFAULT_LIMITS).rgb
    except ImageRejected as error:
        raise HTTPException(422, f"the catalog image cannot be read ({error.reason})") from error
    buffer = BytesIO()
    ImageOps.contain(image, (side, side), Image.Resampling.BICUBIC).save(buffer, format="PNG")
    return buffer.getvalue()


_bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def require_admin(request: Request, credentials: Credentials) -> None:
    """The bearer token must equal service.admin_token (compared in constant time)."""
    token = request.app.state.admin_token
    if token is None:
        raise HTTPException(403, "admin routes are disabled: set IMAGESEARCH_SERVICE__ADMIN_TOKEN")
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(401, "a valid admin bearer token is required", {"WWW-Authenticate": "Bearer"})


class Swapper:
    """Loads a new model + index pair on a thread and swaps it into `state.service` in one assignment."""

    def __init__(self, state) -> None:
        self.state = state
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.last: dict = {"status": "idle"}

    def start(self, load: Callable[[], SearchService]) -> bool:
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                return False
            self.last = {"status": "loading"}
            self.thread = threading.Thread(target=self._run, args=(load,), name="index-swap", daemon=True)
            self.thread.start()
            return True

    def _run(self, load: Callable[[], SearchService]) -> None:
        try:
            fresh = load()
        except Exception as error:  # any failure to load must leave the serving pair untouched
            self.last = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
            return
        previous = self.state.service
        self.state.service = fresh  # one reference assignment: a request sees the old pair or the new
        previous.close()  # its queued queries still finish on it
        self.last = {"status": "swapped", "from": previous.model_version, "to": fresh.model_version}

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def status(self, serving: str) -> dict:
        return {**self.last, "serving": serving}
