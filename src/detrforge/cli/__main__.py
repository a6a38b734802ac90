"""``python -m detrforge.cli``."""

from detrforge.cli import app

app()
