"""`python -m imagesearch.cli ...`: the same commands as the `imagesearch` console script."""

from imagesearch.cli import app

app()
