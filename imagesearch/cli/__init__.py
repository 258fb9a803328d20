"""The `imagesearch` command line: each subcommand maps onto one core function.

Importing the command modules registers their commands on `app` (the console script's entry point).
"""

from imagesearch.cli import online, pipeline, query
from imagesearch.cli.app import app

__all__ = ["app", "online", "pipeline", "query"]
