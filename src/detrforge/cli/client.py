"""What every command module of the CLI shares: the API client, the error exit, URI
normalisation and the one wait loop (``follow``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer

from detrforge.platform.settings import Settings

__all__ = ["TERMINAL", "ApiClient", "absolute_uri", "apply_sets", "fail", "follow"]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as an error and exit with ``code``."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


class ApiClient:
    """A small client of the control API for the CLI and the demo."""

    def __init__(self, settings: Settings) -> None:
        import httpx

        key = settings.api_key
        if not key and settings.admin_key_path.exists():
            key = settings.admin_key_path.read_text().strip()
        if not key:
            fail(
                "no API key: set DETRFORGE_API_KEY (or run `detrforge serve` once to create "
                f"{settings.admin_key_path})",
                2,
            )
        self.http = httpx.Client(
            base_url=settings.resolved_api_url(),
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(120.0, connect=5.0),
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(
                f"cannot reach the detrforge API at {self.http.base_url}: {exc}. "
                "Is `detrforge serve` running?",
                3,
            )
        if response.status_code >= 400:
            try:
                body = response.json()
                field = f" [{body['field']}]" if body.get("field") else ""
                detail = f"{body.get('code')}{field}: {body.get('message')}"
                for d in body.get("details", [])[1:10]:
                    detail += (
                        f"\n  - {d.get('file', '') + ': ' if d.get('file') else ''}"
                        f"{d.get('field')}: {d.get('message')}"
                    )
            except ValueError:
                detail = response.text
            fail(f"HTTP {response.status_code} {detail}", 2)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text


def apply_sets(spec: dict[str, Any], items: list[str]) -> None:
    """Apply ``--set field=value`` options to ``spec``: the value as JSON, else as a string."""
    for item in items:
        field, _, raw = item.partition("=")
        try:
            spec[field] = json.loads(raw)
        except json.JSONDecodeError:
            spec[field] = raw


def absolute_uri(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).expanduser().resolve())


# Terminal states of jobs (fine-tunes, evaluations, benchmarks, sweeps).
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


def follow(
    client: ApiClient,
    path: str,
    *,
    done: Callable[[dict[str, Any]], bool],
    describe: Callable[[dict[str, Any]], str] | None = None,
    err: bool = False,
    poll_s: float = 2.0,
) -> dict[str, Any]:
    """GET ``path`` until ``done(body)``; print ``describe(body)`` each time it changes.

    The one wait loop of the CLI: ``--wait`` on jobs, evaluations, benchmarks, sweeps and
    promotions all end here, on any terminal state (the caller decides what counts as success).
    """
    last = None
    while True:
        body = dict(client.call("GET", path))
        if describe is not None:
            line = describe(body)
            if line != last:
                typer.echo(f"[{time.strftime('%H:%M:%S')}] {line}", err=err)
                last = line
        if done(body):
            return body
        time.sleep(poll_s)
