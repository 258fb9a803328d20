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

from imagesearch.backbones import WeightsNotFound
from imagesearch.catalog import read_catalog
from imagesearch.corpus import CorpusFetchError, fetch_openclipart
from imagesearch.doctor import diagnose
from imagesearch.embed import embed_image_folder, embed_texts
from imagesearch.registry import CHAMPION, RegistryError, register_v0
from imagesearch.settings import Settings
from imagesearch.sources import SourceError
from imagesearch.steps import CATALOG_STAGE, catalog_step
from imagesearch.versioning import VersioningError
from imagesearch.workspace import data_repo, init_workspace, require_workspace

app = typer.Typer(help="Text and image search over your own image collection.", no_args_is_help=True)
corpus_app = typer.Typer(help="The embedded default corpus.", no_args_is_help=True)
catalog_app = typer.Typer(help="The image catalog (first step of the pipeline).", no_args_is_help=True)
versions_app = typer.Typer(help="DVC versions of pipeline outputs.", no_args_is_help=True)
model_app = typer.Typer(help="Encoders in the MLflow registry.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(catalog_app, name="catalog")
app.add_typer(versions_app, name="versions")
app.add_typer(model_app, name="model")

console = Console(soft_wrap=True)
USER_ERRORS = (
    SourceError,
    VersioningError,
    CorpusFetchError,
    FileNotFoundError,
    ValueError,
    WeightsNotFound,
    RegistryError,
)
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def user_errors(command: Callable) -> Callable:
    """Known failures become one clear line and exit code 2, not a traceback."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False)
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
        from imagesearch.registry import load_encoder

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


if __name__ == "__main__":
    app()
