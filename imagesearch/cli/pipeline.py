"""Pipeline commands, in pipeline order: each calls one stage's step (the same function its DVC stage
and Dagster asset call).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from imagesearch.catalog.build import read_catalog, summarize_catalog
from imagesearch.catalog.corpus import fetch_openclipart
from imagesearch.catalog.ood_collections import fetch_collections, read_manifest
from imagesearch.catalog.step import CATALOG_STAGE, catalog_step
from imagesearch.cli.app import (
    JsonOption,
    app,
    catalog_app,
    console,
    corpus_app,
    embeddings_app,
    evaluate_app,
    index_app,
    model_app,
    training_data_app,
    user_errors,
    versions_app,
)
from imagesearch.cli.output import epoch_line, print_doctor, print_index, print_summary
from imagesearch.common.doctor import diagnose
from imagesearch.common.workspace import data_repo, init_workspace, require_workspace
from imagesearch.embeddings.step import backfill_step
from imagesearch.evaluation.report import EvaluationReport
from imagesearch.evaluation.step import eval_sets_step, evaluation_step, promotion_step
from imagesearch.index.step import index_step
from imagesearch.models.registry import CHAMPION, pin_reference, register_v0
from imagesearch.settings import Settings
from imagesearch.training.step import train_step
from imagesearch.training_data.step import mix_step, source_step


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
    else:
        print_doctor(report)


@corpus_app.command("fetch")
@user_errors
def corpus_fetch() -> None:
    """Fetch Debian's openclipart-png (8,121 PNG clip art images) into the workspace, and the
    out-of-domain evaluation collections (evaluation.ood_collections)."""
    settings = Settings()
    with console.status("fetching openclipart-png (apt-get download + dpkg-deb -x)"):
        folder = fetch_openclipart(settings.default_corpus_root)
    count = sum(1 for _ in folder.rglob("*.png"))
    console.print(f"default corpus: {count} PNG files in [bold]{folder}[/]")
    with console.status("fetching the out-of-domain collections"):
        folders = fetch_collections(settings.evaluation.ood_collections, settings.ood_corpus_dir)
    for name, folder in folders.items():
        splits = read_manifest(folder)["split"].value_counts().to_dict()
        console.print(f"out-of-domain {name}: {splits} images in [bold]{folder}[/] (evaluation only)")


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
        print_summary(summary)


@catalog_app.command("summary")
@user_errors
def catalog_summary(as_json: JsonOption = False) -> None:
    """Counts of the current catalog and quarantine."""
    settings = Settings()
    summary = {
        "catalog": str(settings.catalog_path),
        "quarantine": str(settings.quarantine_path),
        **summarize_catalog(read_catalog(settings.catalog_path), read_catalog(settings.quarantine_path)),
    }
    if as_json:
        print(json.dumps(summary))
    else:
        print_summary(summary)


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
    full: Annotated[
        bool, typer.Option("--full", help="rebuild even when a live update (delta) would do")
    ] = False,
) -> None:
    """Build the workspace's search index from the catalog's embeddings (run the backfill first).

    A small change to the catalog since the last build is published as a live update instead."""
    settings = Settings()
    result = index_step(settings, model=model, record=record, full=full)
    if result.delta is not None:
        console.print(
            f"live update: +{result.delta['added']} -{result.delta['removed']} images since the base "
            f"({result.vectors} vectors served, base {result.manifest.factory})"
        )
    else:
        print_index(settings.search_index_dir, result.manifest)
    if result.version:
        console.print(f"DVC version {result.version.short_commit}: {result.version.outputs}")


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
    report = evaluation_step(Settings(), log=console.print)
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
        on_epoch=lambda epoch, metrics: console.print(epoch_line(epoch, metrics)),
    )
    trained = result.result
    console.print(
        f"challenger = version {result.registered.version} (MLflow run {result.registered.run_id}); "
        f"{trained.rows} examples, {trained.images} images, {trained.seconds:.0f} s "
        f"(feature cache {trained.cache_seconds:.0f} s)"
    )
