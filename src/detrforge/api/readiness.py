"""Readiness: can this API do its work now? Database, Ray Jobs API, MLflow, artifact store.

``/health`` says the process is alive and costs nothing; ``/ready`` (and ``detrforge status``)
asks each dependency, in parallel and each within a time bound, and says which one is down.
Messages name the component and the failure, never a credential (URLs lose their user info).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Engine, text

from detrforge.control.mirror import MlflowMirror
from detrforge.platform.cluster import alive_node_count
from detrforge.platform.launcher import Launcher
from detrforge.platform.storage import open_store
from detrforge.platform.tracking import Tracker

__all__ = ["ComponentStatus", "Readiness", "redact_url"]

# One probe may not hold a readiness answer longer than this (load balancers time out at ~5 s).
PROBE_TIMEOUT_S = 4.0


@dataclass(frozen=True)
class ComponentStatus:
    """One dependency's answer: ``ok`` with a message saying what was checked or what failed."""

    name: str
    ok: bool
    message: str
    elapsed_ms: float


def redact_url(url: str) -> str:
    """``url`` without user name or password (``postgresql://u:p@h/db`` -> ``postgresql://h/db``)."""
    parts = urlsplit(url)
    if not parts.netloc or "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


@dataclass
class Readiness:
    """The probes of one API process, built from the same parts the services use."""

    engine: Engine
    launcher: Launcher
    tracker: Tracker
    artifact_root: str
    # Its lag is reported under "mlflow" but never makes the API unready: the registry
    # database is the source of truth and the mirror catches up by itself.
    mirror: MlflowMirror | None = None

    def check(self, *, timeout_s: float = PROBE_TIMEOUT_S) -> list[ComponentStatus]:
        """Every probe, run in parallel; a probe that has not answered in time is down."""
        probes: dict[str, Callable[[], str]] = {
            "database": self._database,
            "ray": self._ray,
            "mlflow": self._mlflow,
            "artifacts": self._artifacts,
        }
        pool = ThreadPoolExecutor(max_workers=len(probes), thread_name_prefix="ready")
        started = time.monotonic()
        futures = {name: pool.submit(probe) for name, probe in probes.items()}
        results = []
        for name, future in futures.items():
            left = max(0.0, timeout_s - (time.monotonic() - started))
            try:
                message, ok = future.result(timeout=left), True
            except FutureTimeout:
                message, ok = f"no answer within {timeout_s:.0f} s", False
            except Exception as exc:  # noqa: BLE001 - a probe reports any failure as "down"
                message, ok = f"{type(exc).__name__}: {exc}"[:500], False
            elapsed = (time.monotonic() - started) * 1000
            results.append(ComponentStatus(name, ok, f"{name}: {message}", round(elapsed, 1)))
        # A hung probe keeps its thread; it must not hold the answer.
        pool.shutdown(wait=False, cancel_futures=True)
        return results

    def _database(self) -> str:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return f"{self.engine.dialect.name} answers"

    def _ray(self) -> str:
        import httpx

        address = self.launcher.address
        try:
            response = httpx.get(f"{address}/api/version", timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise RuntimeError(
                f"the Ray Jobs API at {redact_url(address)} does not answer "
                f"({type(exc).__name__}); is the Ray head up?"
            ) from exc
        if response.status_code != 200:
            raise RuntimeError(f"the Ray Jobs API answered HTTP {response.status_code}")
        nodes = alive_node_count(address)
        if nodes == 0:
            raise RuntimeError(f"the Ray cluster at {redact_url(address)} has no alive node")
        version = response.json().get("ray_version", "?")
        return f"Ray {version} Jobs API answers, {nodes} node(s) alive"

    def _mlflow(self) -> str:
        uri = self.tracker.tracking_uri
        if uri.startswith(("http://", "https://")):
            import httpx

            response = httpx.get(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S)
            if response.status_code != 200:
                raise RuntimeError(
                    f"the MLflow server at {redact_url(uri)} answered HTTP {response.status_code}"
                )
        else:
            self.tracker.client.search_experiments(max_results=1)
        message = f"tracking store {redact_url(uri)} answers"
        lagging = self.mirror.lagging() if self.mirror is not None else []
        if lagging:
            first = lagging[0]
            message += (
                f"; the model registry mirror is behind for {len(lagging)} model(s), retrying "
                f"(first: {first.model}, {first.attempts} failed attempt(s): {first.error[:200]})"
            )
        return message

    def _artifacts(self) -> str:
        root = self.artifact_root
        if root.startswith("s3://"):
            # Raises on an unreachable endpoint, bad credentials or a missing bucket; an empty
            # prefix is fine.
            open_store(root).exists(root)
            return f"artifact store {root} answers"
        path = Path(urlsplit(root).path if root.startswith("file:") else root)
        if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
            raise RuntimeError(f"artifact root {path} is missing or not writable")
        return f"artifact root {path} is writable"
