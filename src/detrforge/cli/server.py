"""``detrforge serve``, ``status``, ``stop``, ``cluster down`` and ``keys create``: the commands
that run on the server itself (the rest of the CLI talks HTTP to the API)."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Annotated

import typer

from detrforge.cli.client import fail as _fail
from detrforge.platform.errors import DetrforgeError
from detrforge.platform.settings import Settings

__all__ = ["install"]

keys_app = typer.Typer(help="API keys (direct database access, for admins on the server).")
cluster_app = typer.Typer(help="The embedded local Ray head.", no_args_is_help=True)


def install(app: typer.Typer) -> None:
    """Add the server-side commands to the top-level CLI."""
    app.command()(serve)
    app.command()(status)
    app.command()(stop)
    app.add_typer(keys_app, name="keys")
    app.add_typer(cluster_app, name="cluster")


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8321).")] = None,
) -> None:
    """Run the control API in the foreground (and, without RAY_ADDRESS, a local Ray head).

    Ctrl-C or SIGTERM stops both. Exits non-zero if the head does not come up or dies.
    """
    from detrforge.api.server import run_server

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = Settings()
    if host:
        settings.host = host
    if port:
        settings.port = port
    try:
        code = run_server(settings, echo=lambda line: typer.echo(line, err=True))
    except DetrforgeError as exc:
        _fail(exc.message)
    raise typer.Exit(code)


def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Readiness of the API and what it depends on (database, Ray, MLflow, artifacts)."""
    import httpx

    settings = Settings()
    url = f"{settings.resolved_api_url()}/ready"
    try:
        response = httpx.get(url, timeout=15)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        _fail(f"the API at {settings.resolved_api_url()} does not answer ({exc}); is serve up?")
    if as_json:
        typer.echo(json.dumps(body, indent=2))
    else:
        typer.echo(
            f"detrforge {body.get('version')} at {settings.resolved_api_url()}: "
            f"{body.get('status')}"
        )
        for name, part in (body.get("components") or {}).items():
            mark = "ok  " if part["ok"] else "DOWN"
            typer.echo(f"  {mark} {name:<10} {part['message']}")
    if response.status_code != 200:
        raise typer.Exit(1)


def stop(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it to exit.")] = 60.0,
) -> None:
    """Stop the `detrforge serve` running on DETRFORGE_HOME (and the Ray head it started)."""
    from detrforge.api.server import holder_pid

    settings = Settings()
    pid = holder_pid(settings.resolved_home())
    if pid is None:
        _fail(f"no `detrforge serve` is running on {settings.resolved_home()}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if holder_pid(settings.resolved_home()) is None:
            typer.echo(f"stopped detrforge serve (pid {pid}) and its Ray head")
            return
        time.sleep(0.5)
    _fail(f"detrforge serve (pid {pid}) did not exit within {timeout:.0f} s")


@cluster_app.command("down")
def cluster_down() -> None:
    """Stop a local Ray head left running by an earlier serve (serve stops its own head)."""
    import psutil

    from detrforge.api.server import head_pid_file
    from detrforge.platform.cluster import stop_process_tree

    pid_file = head_pid_file(Settings().resolved_home())
    if not pid_file.exists():
        _fail("no local Ray head recorded in DETRFORGE_HOME")
    pid = int(pid_file.read_text())
    try:
        is_head = "detrforge.platform.ray_head" in " ".join(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        is_head = False
    if not is_head:
        pid_file.unlink()
        _fail(f"the recorded Ray head (pid {pid}) is no longer running; nothing to stop")
    killed = stop_process_tree(pid)
    pid_file.unlink()
    suffix = f" ({len(killed)} process(es) needed SIGKILL)" if killed else ""
    typer.echo(f"stopped the local Ray head (pid {pid}) and every process it started{suffix}")


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="viewer, operator, approver or admin")] = "viewer",
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
) -> None:
    """Create an API key and print it once."""
    from detrforge.platform.db import make_engine, make_session_factory, upgrade_database
    from detrforge.registry.entities import Role
    from detrforge.registry.keys import KeyStore

    try:
        role_value = Role(role)
    except ValueError:
        _fail(f"--role must be one of {[r.value for r in Role]}, got {role!r}", 2)
    settings = Settings()
    url = settings.resolved_database_url()
    upgrade_database(url)
    store = KeyStore(make_session_factory(make_engine(url)))
    key, secret = store.create(name=name or f"{role}-{int(time.time())}", role=role_value)
    typer.echo(f"id: {key.id}\nrole: {key.role.value}\nkey: {secret}\n(shown once; store it now)")
