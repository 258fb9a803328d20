"""The `imagesearch` Typer application: its command groups, the console, and user-error handling."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Annotated

import typer
from rich.console import Console

from imagesearch.catalog.corpus import CorpusFetchError
from imagesearch.catalog.sources import SourceError
from imagesearch.common.versioning import VersioningError
from imagesearch.common.workspace import StageBusy
from imagesearch.models.backbones import WeightsNotFound
from imagesearch.models.registry import RegistryError
from imagesearch.training_data.judgments import JudgmentsError

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
    StageBusy,
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
