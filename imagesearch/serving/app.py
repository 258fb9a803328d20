"""The HTTP search service: `create_app(settings)` builds the FastAPI app; routes delegate to SearchService.

The lifespan loads the model and the index it was built with once into `app.state`; requests read
the current pair through one attribute, so a later swap replaces both at once."""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.middleware.trustedhost import TrustedHostMiddleware

from imagesearch.common.io import content_id
from imagesearch.feedback.clicklog import ClickLog, UnknownQuery
from imagesearch.feedback.log_schema import SIMULATED_HEADER
from imagesearch.serving.experiments import (
    CHALLENGER,
    INTERLEAVING,
    SHADOW,
    SWAP,
    Shown,
    SliceDraw,
    interleaved,
    overlap_at_k,
    shadowed,
    swapped,
)
from imagesearch.serving.guards import BodyLimit, SameOriginPosts, reload_folder
from imagesearch.serving.requests import (
    ParsedSearch,
    cached_thumbnail,
    knn_request,
    make_thumbnail,
    page_request,
    parse_search,
    prepare,
    validated,
)
from imagesearch.serving.schemas import (
    ClickEvent,
    KnnResult,
    ReloadRequest,
    ResultOut,
    SearchResponse,
)
from imagesearch.serving.service import SearchService
from imagesearch.serving.swap import Swapper, load_if_built, watch_index
from imagesearch.serving.telemetry import Measured, Telemetry
from imagesearch.serving.types import Answer, BadQuery
from imagesearch.serving.warm_up import is_warm_up, plain_host, warm_routes
from imagesearch.settings import Settings

ID_PATTERN = re.compile(r"[0-9a-f]{8,64}")
log = logging.getLogger(__name__)


async def current_service(request: Request) -> SearchService:
    """The model + index pair serving now (read once per request, so a swap never mixes two pairs).
    A coroutine: FastAPI runs a plain function dependency on a thread, a hop per request."""
    return request.app.state.service


Service = Annotated[SearchService, Depends(current_service)]


def create_app(
    settings: Settings,
    *,
    index_dir: Path | None = None,
    service: SearchService | None = None,
    challenger: SearchService | None = None,
) -> FastAPI:
    """The app over `index_dir` (default: the workspace's index) and, when settings.experiment gives
    the challenger traffic, the challenger index; `service` / `challenger` skip loading (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = service or await run_in_threadpool(SearchService.from_index, settings, index_dir)
        # the models and libraries loaded above are millions of long-lived objects: a full garbage
        # collection walking them stalls every request for tens of milliseconds, so they are moved
        # out of the collector's view (new objects are still collected)
        gc.freeze()
        # a connection for each of anyio's 40 request threads that may log at once (20 + 20 overflow)
        app.state.clicks = ClickLog(settings.effective_click_log_url, pool_size=20, background=True)
        await run_in_threadpool(app.state.clicks.warm_up)
        app.state.telemetry = Telemetry()
        app.state.swapper = Swapper(app.state)
        app.state.slices = SliceDraw(settings.experiment)
        app.state.background = set()  # shadow answers still running (a task needs a reference)
        challenger_dir = settings.challenger_index_dir
        experiments_on = settings.experiment.interleave_share + settings.experiment.shadow_share > 0
        app.state.challenger = challenger
        if experiments_on and service is None:
            app.state.challenger = await run_in_threadpool(load_if_built, settings, challenger_dir)
        app.state.challenger_swapper = Swapper(app.state, slot="challenger")
        watchers = []
        if config.reload_poll_seconds and service is None:
            folder = index_dir or settings.search_index_dir
            watched = [(app.state.swapper, folder)]
            watched += [(app.state.challenger_swapper, challenger_dir)] if experiments_on else []
            watchers = [
                asyncio.create_task(watch_index(swapper, settings, where, config.reload_poll_seconds))
                for swapper, where in watched
            ]
        if config.warm_up:
            await warm_routes(app, plain_host(config.allowed_hosts))
            app.state.telemetry = Telemetry()  # the warm-up's requests are not the clients'
            for served in (app.state.service, app.state.challenger):
                if served is not None and served.text_vectors is not None:
                    served.text_vectors.clear()
        yield
        for watcher in watchers:
            watcher.cancel()
        app.state.clicks.close()  # what is queued is written before the process ends

    app = FastAPI(title="imagesearch", version="0.1.0", lifespan=lifespan)
    config = settings.service
    started_with = index_dir or settings.search_index_dir
    # outermost last: the timing (of refusals too), the Host check, the Origin check, the body limit
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(SameOriginPosts)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=config.allowed_hosts)
    app.add_middleware(Measured)
    app.state.admin_token = config.admin_token
    app.state.settings = settings

    page_html = files("imagesearch.serving").joinpath("web/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def search_page() -> str:
        """The search page: text box, image drop, results grid, "more like this", click logging."""
        return page_html

    @app.post("/search", response_model=SearchResponse)
    async def search(request: Request, service: Service) -> Response:
        """JSON body (SearchRequest), or multipart: image files plus a `query` field holding that
        JSON (terms name files by field: {"upload": "image"}), or one file `image` plus k/offset/..."""
        started = time.perf_counter()
        parsed = await parse_search(request, config.max_upload_bytes)
        shown, query_id = await _answer(request, service, parsed, experiments=True)
        answer = shown.answer
        owners = [
            request.app.state.challenger if owner == CHALLENGER else service
            for owner in shown.owners or [None] * len(answer.results)
        ]
        results = [
            ResultOut(
                id=r.id,
                score=r.score,
                rank=r.rank,
                caption=owner.caption_of(r.id),
                image_url=f"/images/{r.id}",
                thumbnail_url=f"/images/{r.id}?thumbnail=true",
                **owner.shown_metadata(r.id),
                explanation=r.explanation,
            )
            for r, owner in zip(answer.results, owners, strict=True)
        ]
        timings = answer.timings_ms
        timings["total"] = _ms(started)
        response = SearchResponse(
            query_id=query_id,
            model_version=answer.model_version,
            mode=parsed.query.mode or config.mode,
            results=results,
            total=answer.total,
            total_is_lower_bound=answer.total_is_lower_bound,
            facets=answer.facets,
            timings_ms=timings,
        )
        # serialised here, once: a returned model would be validated against response_model again
        # before FastAPI serialised it (response_model stays for the OpenAPI schema)
        return Response(response.model_dump_json(), media_type="application/json")

    @app.post("/knn-service", response_model=list[KnnResult])
    async def knn_service(request: Request, service: Service) -> list[KnnResult]:
        """clip-retrieval's ClipClient protocol: `ClipClient(url=".../knn-service", indice_name=...)`.

        Body: KnnRequest as JSON. ClipClient sends it without a content-type, so a missing one is
        read as JSON; any other than JSON is refused (a cross-site form post cannot pass as JSON).
        """
        content_type = request.headers.get("content-type", "application/json")
        if not content_type.startswith("application/json"):
            raise HTTPException(415, f"send the body as application/json, not {content_type}")
        body = knn_request(await request.body())
        if body.image_url:
            raise HTTPException(
                422, "image_url is not fetched (the service makes no outbound requests): send image"
            )
        if body.modality != "image":
            raise HTTPException(422, f"modality {body.modality!r}: this service indexes images only")
        given = {"text": body.text, "embedding": body.embedding_input, "image": body.image}
        terms = [{name: value} for name, value in given.items() if value is not None]
        if len(terms) != 1:
            raise HTTPException(422, "give exactly one of text, image or embedding_input")
        query = validated({"terms": terms, "k": body.num_images, "dedup": body.deduplicate, "mode": "vector"})
        shown, _ = await _answer(request, service, ParsedSearch(query, query.terms, {}), experiments=False)
        base = str(request.base_url).rstrip("/")
        return [
            KnnResult(
                id=r.id, similarity=r.score, url=f"{base}/images/{r.id}", caption=service.caption_of(r.id)
            )
            for r in shown.answer.results
        ]

    @app.get("/images/{image_id}")
    async def image(image_id: str, service: Service, thumbnail: bool = False) -> Response:
        """A catalog image by id (the original, or a thumbnail, cached): ids only, never a path."""
        path, side = service.path_of(image_id), config.thumbnail_side
        if path is None or not path.is_file():
            raise HTTPException(404, f"no catalog image with id {image_id!r}")
        if not thumbnail:
            return FileResponse(path)
        if not ID_PATTERN.fullmatch(image_id):  # a bring-your-own id: not a safe cache file name
            return Response(await run_in_threadpool(make_thumbnail, path, side), media_type="image/png")
        cached = await run_in_threadpool(cached_thumbnail, path, image_id, side, settings.thumbnails_dir)
        return FileResponse(cached, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

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
        index_dir = reload_folder(body.index_dir if body else None, started_with, settings.index_dir)
        started = swapper.start(lambda: SearchService.from_index(settings, index_dir))
        if not started:
            raise HTTPException(409, "a reload is already running")
        return {"status": "loading", "serving": request.app.state.service.model_version}

    @app.get("/admin/reload", dependencies=[Depends(require_admin)])
    async def reload_status(request: Request) -> dict:
        return request.app.state.swapper.status(request.app.state.service.model_version)

    @app.get("/health")
    async def health(request: Request, service: Service) -> dict:
        challenger = _challenger_beside(request.app.state, service)
        return {
            "status": "ok",
            "model_version": service.model_version,
            "runtime": service.encoder.runtime,  # what encodes queries, e.g. onnx:CPUExecutionProvider
            "vectors": service.index.live_count,
            "max_k": config.max_k,  # the page asks for no more per page
            "challenger_version": challenger.model_version if challenger else None,
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> str:
        """Prometheus text format: request counts and latency histograms per route and status."""
        return request.app.state.telemetry.render()

    return app


async def _answer(
    request: Request, service: SearchService, parsed: ParsedSearch, *, experiments: bool
) -> tuple[Shown, str]:
    """The page of the query's experiment slice (interleaved, shadowed, swapped or plain), with its
    impressions logged; a shadowed query's challenger answer is logged when it comes."""
    state = request.app.state
    warming = is_warm_up(request)
    challenger = _challenger_beside(state, service)
    kind = state.slices.draw(has_challenger=challenger is not None, first_page=parsed.query.offset == 0)
    kind = kind if experiments and not warming else None
    started = time.perf_counter()
    if kind == INTERLEAVING:
        shown = await _interleaved(service, challenger, parsed, state.slices.rng)
    else:
        answer = await _ranked(service, parsed)
        if kind == SWAP:
            shown = swapped(answer, state.slices.rng)
        elif kind == SHADOW:
            shown = shadowed(answer, challenger.model_version)
        else:
            shown = Shown(answer)
    champion_ms = _ms(started)
    answer = shown.answer
    if warming:
        return shown, ""
    uploads = list(parsed.uploads.values())
    query_id = state.clicks.log_query(  # queued: written by the log's own thread
        [(r.id, r.score) for r in answer.results],
        model_version=answer.model_version,
        query_text=parsed.query.text if parsed.query.text is not None else parsed.describe(),
        query_image_hash=content_id(uploads[0]) if uploads else parsed.query.image_id,
        simulated=request.headers.get(SIMULATED_HEADER) == "1",
        experiment=shown.experiment,
        teams=shown.teams,
    )
    if shown.experiment is not None and shown.experiment["kind"] == SHADOW:
        task = asyncio.create_task(_shadow(state, challenger, parsed, query_id, answer, champion_ms))
        state.background.add(task)
        task.add_done_callback(state.background.discard)
    return shown, query_id


def _challenger_beside(state, service: SearchService) -> SearchService | None:
    """The challenger pair, when one is served and its model is not the champion's."""
    challenger = state.challenger
    if challenger is None or challenger.model_version == service.model_version:
        return None
    return challenger


async def _ranked(service: SearchService, parsed: ParsedSearch) -> Answer:
    """prepare (validate, decode) -> encode + search on the service's worker."""
    prepared: dict[str, float] = {}
    limit = service.config.max_upload_bytes
    try:  # only images need a thread (decoding); the rest is validation
        page = page_request(parsed.query, parsed.terms, service, service.config)
        if parsed.needs_decoding:
            ready = await run_in_threadpool(prepare, service, parsed, prepared, limit)
        else:
            ready = prepare(service, parsed, prepared, limit)
    except BadQuery as error:
        raise HTTPException(422, str(error)) from error
    pending = asyncio.wrap_future(service.worker.enqueue(ready, page))
    try:  # awaited, not waited for on a thread: a queue of queries holds no threads
        answer: Answer = await asyncio.wait_for(pending, service.config.answer_timeout_s)
    except TimeoutError as error:  # queued past SERVICE__ANSWER_TIMEOUT_S: overloaded
        raise HTTPException(503, "the search service is overloaded; retry shortly") from error
    except BadQuery as error:  # found on the worker: the terms cancel out
        raise HTTPException(422, str(error)) from error
    answer.timings_ms = {**prepared, **answer.timings_ms}
    return answer


async def _interleaved(service: SearchService, challenger: SearchService, parsed: ParsedSearch, rng) -> Shown:
    """Both rankers' first pages, merged by team draft; a challenger that cannot answer (a failure,
    an embedding of another dimension) leaves the champion's page alone, never an error."""
    champion_answer, challenger_answer = await asyncio.gather(
        _ranked(service, parsed), _ranked(challenger, parsed), return_exceptions=True
    )
    if isinstance(champion_answer, BaseException):
        raise champion_answer
    if isinstance(challenger_answer, BaseException):
        log.warning("the challenger could not answer an interleaved query: %r", challenger_answer)
        return Shown(champion_answer)
    return interleaved(champion_answer, challenger_answer, challenger.model_version, parsed.query.k, rng)


async def _shadow(
    state, challenger: SearchService, parsed: ParsedSearch, query_id: str, shown: Answer, champion_ms: float
) -> None:
    started = time.perf_counter()
    try:
        answer = await _ranked(challenger, parsed)
    except Exception as error:  # the user has their page; the challenger's failure is only logged
        log.warning("the challenger could not answer a shadowed query: %r", error)
        return
    state.clicks.log_shadow(
        query_id,
        challenger_version=challenger.model_version,
        champion_ms=champion_ms,
        challenger_ms=_ms(started),
        overlap=overlap_at_k(shown, answer),
    )


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


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
