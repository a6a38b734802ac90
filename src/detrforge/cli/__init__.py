"""The ``detrforge`` command line: serve the API, make and check datasets, drive jobs, sweeps and
the registry. Every command but ``serve``, ``status``/``stop``, ``cluster`` and ``keys`` talks
HTTP to the API (``client.ApiClient``); one module per command group."""

from __future__ import annotations

import typer

from detrforge.cli import registry, server, sweep
from detrforge.cli.data import data_app
from detrforge.cli.jobs import bench_app, eval_app, finetune_app

__all__ = ["app"]

app = typer.Typer(
    help="detrforge: fine-tune, gate and ship RF-DETR detectors.", no_args_is_help=True
)
server.install(app)
app.add_typer(data_app, name="data")
app.add_typer(finetune_app, name="finetune")
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")
registry.install(app)
sweep.install(app)
