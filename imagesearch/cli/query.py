"""Commands on the user's own images: embed a folder, index it, search it, serve it over HTTP."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from imagesearch.cli.app import JsonOption, app, console, index_app, user_errors
from imagesearch.cli.output import print_index
from imagesearch.embeddings.adhoc import embed_image_folder, embed_texts
from imagesearch.index.folder import build_folder_index, hits_as_json, read_queries, search_queries
from imagesearch.index.store import load_index
from imagesearch.models.registry import CHAMPION, load_encoder, pin_reference
from imagesearch.serving.query_syntax import parse_query
from imagesearch.serving.requests import ParsedSearch, page_request, prepare
from imagesearch.serving.schemas import SearchRequest
from imagesearch.serving.service import SearchService
from imagesearch.settings import Settings

ModelOption = Annotated[
    str, typer.Option("--model", help="registry alias/version, models:/ URI, encoder folder, or v0")
]


@app.command()
@user_errors
def embed(
    out: Annotated[Path, typer.Option("--out", help="parquet file to write")],
    images: Annotated[Path | None, typer.Option("--images", help="folder of images to embed")] = None,
    text: Annotated[list[str] | None, typer.Option("--text", help="text to embed (repeatable)")] = None,
    model: ModelOption = CHAMPION,
    batch_size: Annotated[int, typer.Option(min=1, max=1024)] = 32,
) -> None:
    """Embed a folder of images or some texts with an encoder; write id/path|text + embedding rows."""
    if (images is None) == (not text):
        raise ValueError("give exactly one of --images DIR or --text T")
    settings = Settings()
    with console.status(f"loading encoder {model}"):
        encoder = load_encoder(model, settings)
    if images is not None:
        summary = embed_image_folder(encoder, images, out, batch_size=batch_size, limits=settings.catalog)
    else:
        summary = embed_texts(encoder, text, out)
    console.print(
        f"wrote {summary.rows} embeddings of dim {summary.dim} to [bold]{out}[/]"
        + (f" ({summary.rejected} files rejected: {summary.rejected_reasons})" if summary.rejected else "")
    )


@index_app.command("build")
@user_errors
def index_build(
    images: Annotated[Path, typer.Option("--images", help="folder of images to index")],
    out: Annotated[Path, typer.Option("--out", help="index folder to write (replaced atomically)")],
    model: ModelOption = CHAMPION,
) -> None:
    """Embed a folder of images and build a tuned FAISS index over them."""
    settings = Settings()
    pinned = pin_reference(model, settings)
    with console.status(f"loading encoder {pinned}"):
        encoder = load_encoder(pinned, settings)
    manifest = build_folder_index(encoder, images, out, model=pinned, settings=settings)
    print_index(out, manifest)


@app.command()
@user_errors
def search(
    query: Annotated[
        str | None,
        typer.Argument(help='combined query: "a red car + ./photo.png - snow", weights as "2:cat"'),
    ] = None,
    index: Annotated[
        Path | None,
        typer.Option("--index", help="index folder; default: the workspace's index of the catalog"),
    ] = None,
    text: Annotated[str | None, typer.Option("--text")] = None,
    image: Annotated[Path | None, typer.Option("--image")] = None,
    queries: Annotated[
        Path | None, typer.Option("--queries", help='JSONL: {"text": ...} or {"image": path}')
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=1000)] = 10,
    model: Annotated[
        str | None, typer.Option("--model", help="default: the model the index was built with")
    ] = None,
    category: Annotated[list[str] | None, typer.Option("--category", help="any of these")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="any of these (--all-tags: all)")] = None,
    all_tags: Annotated[bool, typer.Option("--all-tags")] = False,
    min_score: Annotated[float | None, typer.Option("--min-score", min=-1, max=1)] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="vector | keyword | hybrid")] = None,
    sort: Annotated[str, typer.Option("--sort", help="relevance | date")] = "relevance",
    explain: Annotated[bool, typer.Option("--explain", help="say why each result is there")] = False,
    as_json: JsonOption = False,
) -> None:
    """Search an index by a combined query, by text, by image, or with a file of queries."""
    if sum(option is not None for option in (query, text, image, queries)) != 1:
        raise ValueError("give exactly one of QUERY, --text, --image or --queries")
    settings = Settings()
    if query is not None:
        filters = {"category": category, "tags": tag, "tags_match": "all" if all_tags else "any"}
        options = {"k": k, "min_score": min_score, "mode": mode, "sort": sort, "filters": filters}
        search_combined(settings, index or settings.search_index_dir, query, options, explain, as_json)
        return
    batch = (
        list(read_queries(queries))
        if queries
        else [{"text": text} if text is not None else {"image": str(image)}]
    )
    loaded = load_index(index or settings.search_index_dir)
    encoder = load_encoder(model or loaded.manifest.model, settings)
    if encoder.dim != loaded.manifest.dim:
        raise ValueError(f"encoder dimension {encoder.dim} does not match the index ({loaded.manifest.dim})")
    results = search_queries(encoder, loaded, batch, k)
    for query_line, hits in zip(batch, results, strict=True):
        if as_json or queries:
            print(hits_as_json(query_line, hits))
            continue
        console.rule(str(query_line))
        for rank, hit in enumerate(hits, start=1):
            console.print(f"{rank:>3}  {hit.score:.4f}  {hit.path}", highlight=False)


def search_combined(
    settings: Settings, index: Path, query: str, options: dict, explain: bool, as_json: bool
) -> None:
    """One query through the search service's own path (in this process): terms, filters, modes."""
    terms, uploads = parse_query(query)
    request = SearchRequest.model_validate({**options, "terms": [t.model_dump() for t in terms]})
    settings = settings.model_copy(update={"service": settings.service.model_copy(update={"warm_up": False})})
    service = SearchService.from_index(settings, index)
    try:
        parsed = ParsedSearch(request, terms, uploads)
        page = page_request(request, terms, service, settings.service)
        answer = service.answer(prepare(service, parsed, {}, settings.service.max_upload_bytes), page)
    finally:
        service.close()
    if as_json:
        print(
            json.dumps(
                {
                    "query": query,
                    "total": answer.total,
                    "facets": answer.facets,
                    "results": [asdict(r) | {"path": str(service.path_of(r.id))} for r in answer.results],
                }
            )
        )
        return
    console.rule(f"{parsed.describe()}  ({answer.total}{'+' if answer.total_is_lower_bound else ''} pass)")
    for result in answer.results:
        console.print(f"{result.rank:>3}  {result.score:.4f}  {service.path_of(result.id)}", highlight=False)
        if explain and result.explanation:
            console.print("       " + describe_explanation(result.explanation), highlight=False)


def describe_explanation(explanation: dict) -> str:
    parts = [f"{t['term']} {t['contribution']:+.3f}" for t in explanation["terms"]]
    if explanation["keywords"]:
        parts.append("keywords: " + ", ".join(explanation["keywords"]))
    return "; ".join(parts)


@app.command()
@user_errors
def serve(
    index: Annotated[Path | None, typer.Option("--index", help="default: the workspace's index")] = None,
    host: Annotated[str | None, typer.Option(help="default: service.host (127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="default: service.port (8000)")] = None,
) -> None:
    """Start the HTTP search service (OpenAPI docs at /docs)."""
    import uvicorn

    from imagesearch.serving.app import create_app

    settings = Settings()
    load_index(index or settings.search_index_dir)  # fail here, with a clear line, not inside uvicorn
    uvicorn.run(
        create_app(settings, index_dir=index),
        host=host or settings.service.host,
        port=port or settings.service.port,
        log_level="info",
        access_log=settings.service.access_log,
        limit_concurrency=settings.service.limit_concurrency,
    )


@app.command()
@user_errors
def up() -> None:
    """Start the Dagster webserver + daemon (index sensors on), the MLflow UI and the search service on
    loopback under one supervisor; logs per process in <home>/logs; Ctrl-C stops them all."""
    from imagesearch.common.supervise import exec_supervisor, prepare_dagster_storage, programs, write_config

    settings = Settings()
    load_index(settings.search_index_dir)  # the service needs an index: run `make demo` first
    config = write_config(settings)
    prepare_dagster_storage()
    for program in programs(settings):
        shown = program.url or "(no port)"
        console.print(f"  {program.name:<18} {shown:<28} log: {settings.logs_dir / program.name}.log")
    console.print(f"supervisord: {config}; Ctrl-C stops everything")
    exec_supervisor(config)
