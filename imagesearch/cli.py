"""The `imagesearch` command line: each subcommand maps onto one core function."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from functools import wraps
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from imagesearch.catalog.build import read_catalog
from imagesearch.catalog.corpus import CorpusFetchError, fetch_openclipart
from imagesearch.catalog.sources import SourceError
from imagesearch.catalog.step import CATALOG_STAGE, catalog_step
from imagesearch.common.doctor import diagnose
from imagesearch.common.versioning import VersioningError
from imagesearch.common.workspace import data_repo, init_workspace, require_workspace
from imagesearch.embeddings.adhoc import embed_image_folder, embed_texts
from imagesearch.embeddings.step import backfill_step
from imagesearch.evaluation.report import EvaluationReport
from imagesearch.evaluation.step import eval_sets_step, evaluation_step, promotion_step
from imagesearch.feedback.clicklog import ClickLog
from imagesearch.feedback.simulation import simulate_workspace_clicks
from imagesearch.index.folder import build_folder_index, hits_as_json, read_queries, search_queries
from imagesearch.index.step import index_step
from imagesearch.index.store import load_index
from imagesearch.models.backbones import WeightsNotFound
from imagesearch.models.registry import CHAMPION, RegistryError, load_encoder, pin_reference, register_v0
from imagesearch.settings import Settings
from imagesearch.training.step import train_step
from imagesearch.training_data.judgments import JudgmentsError
from imagesearch.training_data.step import mix_step, source_step

app = typer.Typer(help="Text and image search over your own image collection.", no_args_is_help=True)
corpus_app = typer.Typer(help="The embedded default corpus.", no_args_is_help=True)
catalog_app = typer.Typer(help="The image catalog (first step of the pipeline).", no_args_is_help=True)
versions_app = typer.Typer(help="DVC versions of pipeline outputs.", no_args_is_help=True)
model_app = typer.Typer(help="Encoders in the MLflow registry.", no_args_is_help=True)
index_app = typer.Typer(help="Search indexes over your own images.", no_args_is_help=True)
embeddings_app = typer.Typer(help="Embeddings of the catalog, per model version.", no_args_is_help=True)
training_data_app = typer.Typer(
    help="Training examples from five sources, and their mix.", no_args_is_help=True
)
clicks_app = typer.Typer(help="The impression/click log.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Held-out offline evaluation and promotion.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(catalog_app, name="catalog")
app.add_typer(versions_app, name="versions")
app.add_typer(model_app, name="model")
app.add_typer(index_app, name="index")
app.add_typer(embeddings_app, name="embeddings")
app.add_typer(training_data_app, name="training-data")
app.add_typer(clicks_app, name="clicks")
app.add_typer(evaluate_app, name="evaluate")

console = Console(soft_wrap=True)
USER_ERRORS = (
    SourceError,
    VersioningError,
    CorpusFetchError,
    FileNotFoundError,
    ValueError,
    WeightsNotFound,
    RegistryError,
    JudgmentsError,
)
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def user_errors(command: Callable) -> Callable:
    """Known failures become one clear line and exit code 2, not a traceback."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {error}", highlight=False)
            raise typer.Exit(2) from error

    return wrapper


@app.command()
@user_errors
def init() -> None:
    """Create the workspace folder (data, DVC repo + cache + remote, MLflow, Dagster home)."""
    settings = Settings()
    init_workspace(settings)
    console.print(f"workspace ready at [bold]{settings.home}[/]")


@app.command()
@user_errors
def doctor(as_json: JsonOption = False) -> None:
    """Print resolved settings, where state lives, versions, GPU availability and what is missing."""
    report = diagnose(Settings())
    if as_json:
        print(json.dumps(asdict(report), indent=2))
        return
    console.rule("settings")
    console.print_json(data=report.settings)
    console.rule("state")
    for name, location in report.locations.items():
        mark = "[green]ok[/]" if location["exists"] else "[yellow]--[/]"
        console.print(f"{mark} {name:<17} {location['path']}", highlight=False)
    console.rule("versions")
    for name, version in report.versions.items():
        console.print(f"{name:<22} {version}", highlight=False)
    console.rule("gpu")
    console.print(report.gpu)
    console.rule("missing")
    for item in report.missing or ["nothing"]:
        console.print(f"- {item}", highlight=False)


@corpus_app.command("fetch")
@user_errors
def corpus_fetch() -> None:
    """Fetch Debian's openclipart-png (8,121 PNG clip art images) into the workspace."""
    settings = Settings()
    with console.status("fetching openclipart-png (apt-get download + dpkg-deb -x)"):
        folder = fetch_openclipart(settings.default_corpus_root)
    count = sum(1 for _ in folder.rglob("*.png"))
    console.print(f"default corpus: {count} PNG files in [bold]{folder}[/]")


@catalog_app.command("build")
@user_errors
def catalog_build(
    images: Annotated[
        list[Path] | None, typer.Option("--images", help="extra image folder (repeatable)")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="decode everything again, ignoring the last build")
    ] = False,
    record: Annotated[bool, typer.Option(help="commit the result as a DVC version")] = True,
    as_json: JsonOption = False,
) -> None:
    """Scan, decode and validate every image; write the catalog and the quarantine table."""
    settings = Settings()
    result = catalog_step(
        settings, extra_images=images, full_rescan=full, record=record, progress=not as_json
    )
    summary = {
        "catalog": str(settings.catalog_path),
        "quarantine": str(settings.quarantine_path),
        **result.report.as_dict(),
    }
    if result.version:
        summary |= {"version_commit": result.version.commit, "dvc_md5": result.version.outputs}
    if as_json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)


@catalog_app.command("summary")
@user_errors
def catalog_summary(as_json: JsonOption = False) -> None:
    """Counts of the current catalog and quarantine."""
    settings = Settings()
    catalog = read_catalog(settings.catalog_path)
    quarantine = read_catalog(settings.quarantine_path)
    summary = {
        "catalog": str(settings.catalog_path),
        "quarantine": str(settings.quarantine_path),
        "catalogued": len(catalog),
        "quarantined": len(quarantine),
        "quarantined_by_reason": dict(Counter(quarantine["reason"])),
        "splits": dict(Counter(catalog["split"])),
        "sources": dict(Counter(catalog["source"])),
        "categories": len(set(catalog["category"].dropna())),
    }
    if as_json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)


def _print_summary(summary: dict) -> None:
    table = Table(show_header=False, box=None)
    for key, value in summary.items():
        table.add_row(
            key, ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
        )
    console.print(table)


@versions_app.command("list")
@user_errors
def versions_list(stage: Annotated[str, typer.Argument()] = CATALOG_STAGE) -> None:
    """Recorded versions of a stage's outputs, newest first."""
    settings = Settings()
    require_workspace(settings)
    for version in data_repo(settings).history(stage):
        hashes = " ".join(f"{Path(path).name}={md5[:10]}" for path, md5 in version.outputs.items())
        console.print(f"{version.short_commit}  {hashes}  {version.message}", highlight=False)


@versions_app.command("restore")
@user_errors
def versions_restore(stage: str, revision: str) -> None:
    """Restore a stage's outputs as they were at a workspace git revision (from `versions list`)."""
    settings = Settings()
    require_workspace(settings)
    version = data_repo(settings).restore(stage, revision)
    console.print(f"restored {stage} outputs {version.outputs} (commit {version.short_commit})")


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


@model_app.command("register-v0")
@user_errors
def model_register_v0(
    champion: Annotated[bool, typer.Option(help="make it champion when there is none")] = True,
) -> None:
    """Register the zero-shot baseline (pretrained classifier bridged to text) in MLflow."""
    settings = Settings()
    with console.status("building the zero-shot encoder and logging it to MLflow"):
        registered = register_v0(settings, make_champion_if_none=champion)
    console.print(f"registered {registered.uri} (run {registered.run_id})")


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
    _print_index(out, manifest)


@embeddings_app.command("backfill")
@user_errors
def embeddings_backfill(
    model: Annotated[str | None, typer.Option("--model", help="default: settings (champion)")] = None,
    shard: Annotated[
        list[str] | None, typer.Option("--shard", help="catalog shard 0-f (repeatable); default all")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
    as_json: JsonOption = False,
) -> None:
    """Embed every catalog image the model has not embedded yet (incremental, resumable by shard)."""
    report = backfill_step(Settings(), model=model, shards=shard, progress=not (quiet or as_json))
    summary = {
        "model": report.model_key,
        "embedded": report.embedded,
        "reused": report.reused,
        "dropped": report.dropped,
        "failed": report.failed,
        "images_per_second": round(report.images_per_second, 1),
    }
    if as_json:
        print(json.dumps(summary))
    else:
        console.print(
            f"{report.model_key}: embedded {report.embedded} new images "
            f"({summary['images_per_second']} img/s), reused {report.reused}, dropped {report.dropped}"
            + (f", [red]failed {len(report.failed)}[/]: {report.failed}" if report.failed else "")
        )


@index_app.command("from-catalog")
@user_errors
def index_from_catalog(
    model: Annotated[str | None, typer.Option("--model", help="default: settings (champion)")] = None,
    record: Annotated[bool, typer.Option(help="commit embeddings + index as a DVC version")] = True,
) -> None:
    """Build the workspace's search index from the catalog's embeddings (run the backfill first)."""
    settings = Settings()
    result = index_step(settings, model=model, record=record)
    _print_index(settings.search_index_dir, result.manifest)
    if result.version:
        console.print(f"DVC version {result.version.short_commit}: {result.version.outputs}")


def _print_index(folder: Path, manifest) -> None:
    console.print(
        f"indexed {manifest.count} images in [bold]{folder}[/]: {manifest.factory} ({manifest.reason}); "
        f"params {manifest.params}, recall@10 {manifest.recall_at_10:.3f} vs exact, "
        f"{manifest.latency_ms:.2f} ms/query, {manifest.bytes_per_vector:.0f} B/vector"
    )


@app.command()
@user_errors
def search(
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
    as_json: JsonOption = False,
) -> None:
    """Search an index by text, by image, or with a file of queries (one JSON line out per query)."""
    if sum(option is not None for option in (text, image, queries)) != 1:
        raise ValueError("give exactly one of --text, --image or --queries")
    batch = (
        list(read_queries(queries))
        if queries
        else [{"text": text} if text is not None else {"image": str(image)}]
    )
    settings = Settings()
    loaded = load_index(index or settings.search_index_dir)
    encoder = load_encoder(model or loaded.manifest.model, settings)
    if encoder.dim != loaded.manifest.dim:
        raise ValueError(f"encoder dimension {encoder.dim} does not match the index ({loaded.manifest.dim})")
    results = search_queries(encoder, loaded, batch, k)
    for query, hits in zip(batch, results, strict=True):
        if as_json or queries:
            print(hits_as_json(query, hits))
            continue
        console.rule(str(query))
        for rank, hit in enumerate(hits, start=1):
            console.print(f"{rank:>3}  {hit.score:.4f}  {hit.path}", highlight=False)


if __name__ == "__main__":
    app()


@training_data_app.command("build")
@user_errors
def training_data_build(
    source: Annotated[str, typer.Argument(help="augmentation | classifier | tags | judgments | clicks")],
    record: Annotated[bool, typer.Option(help="commit the examples as a DVC version")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
) -> None:
    """Build one source's training examples (data/training/<source>.parquet) from the catalog."""
    result = source_step(Settings(), source, record=record, progress=not quiet)
    console.print(f"{source}: {result.rows} examples {result.summary}")
    if result.report:
        console.print(result.report)


@training_data_app.command("mix")
@user_errors
def training_data_mix(
    record: Annotated[bool, typer.Option(help="commit the mix as a DVC version")] = True,
) -> None:
    """Mix the enabled sources with their weights into data/training/examples.parquet."""
    result = mix_step(Settings(), record=record)
    console.print(f"{result.rows} training examples: {result.summary}")
    if result.problems:
        raise ValueError(f"leakage: {'; '.join(result.problems)}")


@evaluate_app.command("sets")
@user_errors
def evaluate_sets(
    record: Annotated[bool, typer.Option(help="commit the sets as a DVC version")] = True,
) -> None:
    """Build the held-out evaluation sets from the catalog's test split (data/evaluation/)."""
    result = eval_sets_step(Settings(), record=record)
    console.print(f"evaluation sets: {result.summary}")


@evaluate_app.command("run")
@user_errors
def evaluate_run() -> None:
    """Evaluate challenger, champion, v0 and pretrained features; print the table, log to MLflow."""
    report = evaluation_step(Settings())
    console.print(report.markdown())
    console.print(f"served index: {report.index}")


@evaluate_app.command("show")
@user_errors
def evaluate_show() -> None:
    """Print the last evaluation's table, the served index check and the promotion decision."""
    settings = Settings()
    report = EvaluationReport.read(settings.evaluation_dir)
    console.print(report.markdown())
    console.print(f"served index: {report.index}")
    for label, reference in report.models.items():
        console.print(f"  {label:20} {reference}")
    console.print(f"champion now: {pin_reference(CHAMPION, settings)}")


@evaluate_app.command("promote")
@user_errors
def evaluate_promote() -> None:
    """Apply the promotion rule to the last evaluation (moves the champion alias when it passes)."""
    result = promotion_step(Settings())
    verdict = "promoted" if result.decision.promote else "kept the champion"
    console.print(f"{verdict}: {result.decision.reason}")


@clicks_app.command("simulate")
@user_errors
def clicks_simulate() -> None:
    """Write position-biased simulated clicks on the workspace index into the click log."""
    settings = Settings()
    written = simulate_workspace_clicks(
        settings, ClickLog(settings.effective_click_log_url), read_catalog(settings.catalog_path)
    )
    console.print(f"{written} simulated clicks written to {settings.effective_click_log_url}")


@app.command()
@user_errors
def train(
    record: Annotated[bool, typer.Option(help="commit the trained encoder as a DVC version")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
) -> None:
    """Co-train the two towers on the training examples; register the result as `challenger`."""
    result = train_step(
        Settings(),
        record=record,
        progress=not quiet,
        on_epoch=lambda epoch, metrics: console.print(
            f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch")
        ),
    )
    trained = result.result
    console.print(
        f"challenger = version {result.registered.version} (MLflow run {result.registered.run_id}); "
        f"{trained.rows} examples, {trained.images} images, {trained.seconds:.0f} s "
        f"(feature cache {trained.cache_seconds:.0f} s)"
    )


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
    )
