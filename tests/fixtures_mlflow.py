"""An MLflow tracking server as production runs one, for tests that must not lean on an
embedded store: ``mlflow server`` with a PostgreSQL backend store and S3 artifacts.

``mlflow_server`` (session scope, started on first use, one per xdist worker) yields an
:class:`MlflowServer` whose ``uri`` (``http://127.0.0.1:<port>``) is what ``MLFLOW_TRACKING_URI``
(detrforge's ``Settings.mlflow_tracking_uri``) takes. The server runs as production does:

* ``mlflow server --workers 1 --host 127.0.0.1 --port <free port>`` in its own session, with
  ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` (no job runner processes);
* ``--backend-store-uri postgresql+psycopg://...`` on a fresh database created for it on the
  suite's PostgreSQL (``DETRFORGE_TEST_DATABASE_URL``) and dropped afterwards; without that
  variable the fixture skips the test (CI always sets it);
* ``--artifacts-destination s3://<session bucket>/mlflow`` on the moto server of
  ``fixtures_s3`` (``AWS_ENDPOINT_URL`` and ``MLFLOW_S3_ENDPOINT_URL`` point at it, for the
  server and for every client in this process and its children): clients up- and download
  artifacts through the server (``mlflow-artifacts:/...``), as a production deployment with
  proxied artifacts does.

It is stopped by PID (the ``mlflow`` process, then its uvicorn child) at the end of the session.

``server_tracking_uri`` is the server's URI when the suite has PostgreSQL (CI does) and None
(the embedded store) otherwise, for tests that run a costly job once and would rather not be
skipped; ``server_cluster_api`` is ``cluster_api`` tracked there. ``alias_checkpoint_sha256``
resolves ``models:/NAME@ALIAS`` the way a serving fleet does, with MLflow's own client, and
hashes the checkpoint it downloads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from detrforge.control.mirror import MODEL_CHECKPOINT_FILE
from detrforge.platform.cluster import LocalRayHead, stop_process_tree
from fixtures_cluster import (
    ApiHarness,
    harness,
    head_alive,
    make_settings,
    start_on_reserved_ports,
)
from fixtures_db import POSTGRES_URL_VARIABLE, _fresh_postgres_database
from fixtures_s3 import S3Server

__all__ = [
    "MlflowServer",
    "alias_checkpoint_sha256",
    "mlflow_server",
    "server_cluster_api",
    "server_tracking_uri",
]

_START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class MlflowServer:
    """A running ``mlflow server``: its URI, where it keeps runs and artifacts, its log."""

    uri: str
    backend_store_uri: str
    artifacts_destination: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _start(port: int, *, backend: str, artifacts: str, workdir: Path) -> MlflowServer:
    """Start the server on ``port``; wait until ``/health`` answers, else stop it and raise."""
    log_path = workdir / f"mlflow-server-{port}.log"
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                backend,
                "--artifacts-destination",
                artifacts,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = MlflowServer(
        uri=f"http://127.0.0.1:{port}",
        backend_store_uri=backend,
        artifacts_destination=artifacts,
        process=process,
        log_path=log_path,
    )
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _answers(f"{server.uri}/health"):
            return server
        time.sleep(0.25)
    stop_process_tree(process.pid)
    # The log's words reach start_on_reserved_ports, which retries on "address already in use".
    raise RuntimeError(
        f"mlflow server on port {port} did not come up (exit code {process.poll()}); "
        f"log {log_path}:\n{server.log_tail()}"
    )


@pytest.fixture(scope="session")
def mlflow_server(
    s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """An ``mlflow server`` on PostgreSQL + S3 (moto) for the session; see the module docstring."""
    postgres = os.environ.get(POSTGRES_URL_VARIABLE)
    if not postgres:
        pytest.skip(f"the MLflow server's backend store is PostgreSQL: set {POSTGRES_URL_VARIABLE}")
    bucket = f"detrforge-mlflow-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    databases = _fresh_postgres_database(postgres)
    backend = next(databases)
    # A short folder of its own: the server's working directory and log.
    workdir = Path(tempfile.mkdtemp(prefix="dfmlflow-", dir=tmp_path_factory.getbasetemp()))
    patch = pytest.MonkeyPatch()
    server: MlflowServer | None = None
    try:
        # MLflow's S3 client in this process (and in Ray jobs it starts) must find moto too.
        patch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server.endpoint_url)
        server = start_on_reserved_ports(
            1,
            lambda ports: _start(
                ports[0],
                backend=backend,  # postgresql+psycopg://: the driver this venv has
                artifacts=f"s3://{bucket}/mlflow",
                workdir=workdir,
            ),
        )
        yield server
    finally:
        if server is not None:
            stop_process_tree(server.process.pid)
        patch.undo()
        next(databases, None)  # drops the database


@pytest.fixture
def server_tracking_uri(request: pytest.FixtureRequest) -> str | None:
    """``mlflow_server``'s URI when the suite has PostgreSQL (CI does), else None."""
    if not os.environ.get(POSTGRES_URL_VARIABLE):
        return None
    server: MlflowServer = request.getfixturevalue("mlflow_server")
    return server.uri


@pytest.fixture
def server_cluster_api(
    tmp_path: Path, ray_head: LocalRayHead, server_tracking_uri: str | None
) -> Iterator[ApiHarness]:
    """``cluster_api`` (the real local Ray head, file:// artifacts) tracked on the MLflow server
    when the suite has one (``server_tracking_uri``), else on the embedded store."""
    settings = make_settings(
        tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'registry.db'}",
        ray_address=ray_head.dashboard_url,
        artifact_root=None,
    )
    if server_tracking_uri is not None:
        settings = settings.model_copy(update={"mlflow_tracking_uri": server_tracking_uri})
    yield from harness(settings, alive=head_alive(ray_head))
    shutil.rmtree(tmp_path / "home" / "artifacts", ignore_errors=True)


def alias_checkpoint_sha256(tracking_uri: str, model: str, alias: str, dest: Path) -> str:
    """The sha256 of the checkpoint ``models:/<model>@<alias>`` downloads, with MLflow's own
    client: the alias's version, then its files (a folder holding ``checkpoint.pth``).

    MLflow resolves a ``models:/`` URI through the process-wide tracking URI (it ignores the
    one given to ``download_artifacts``), so ``MLFLOW_TRACKING_URI`` is set meanwhile, as a
    serving host would have it set.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.get_model_version_by_alias(model, alias)  # raises when the alias is missing
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        folder = mlflow.artifacts.download_artifacts(
            f"models:/{model}@{alias}",
            dst_path=str(dest),
            tracking_uri=tracking_uri,
            registry_uri=tracking_uri,
        )
    return hashlib.sha256((Path(folder) / MODEL_CHECKPOINT_FILE).read_bytes()).hexdigest()
