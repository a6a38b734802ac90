"""Real-cluster fixtures: a local Ray head on loopback, a synthetic dataset, the API in-process."""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from fastapi.testclient import TestClient

from detrforge.api.main import create_app
from detrforge.detector.data import DatasetInfo
from detrforge.detector.synthetic import synth_dataset
from detrforge.platform.cluster import LocalRayHead, ray_client_env
from detrforge.platform.settings import Settings
from detrforge.registry.entities import Role

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.update(ray_client_env())

# The tiny fine-tune every integration test runs: Nano at 128 px, 50 queries, one group.
TINY_SPEC: dict[str, Any] = {
    "model_size": "nano",
    "resolution": 128,
    "epochs": 2,
    "batch_size": 4,
    "lr": 5e-4,
    "num_queries": 50,
    "group_detr": 1,
    "num_workers": 2,
    "resources_per_worker": {"CPU": 1},
    "num_checkpoints_to_keep": 1,
}


# Where test servers read user-given paths from (settings.data_roots): pytest's temporary
# folders, where fixtures write datasets and checkpoints, and the repo's ../shared data. Filled
# in once per session by ``_data_roots`` (pytest chooses the temporary base at run time).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared"
DATA_ROOTS: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _data_roots(tmp_path_factory: pytest.TempPathFactory) -> None:
    DATA_ROOTS[:] = [tmp_path_factory.getbasetemp(), SHARED_DATA]


# An empty MLflow store, migrated once per session (on first use): every API harness starts
# from a copy of it. MLflow's own migrations take 1-3 s per fresh store, and about 200 tests
# build a harness. Set by ``_session_temp``, like DATA_ROOTS.
_SESSION_TEMP: list[pytest.TempPathFactory] = []
_MLFLOW_TEMPLATE: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _session_temp(tmp_path_factory: pytest.TempPathFactory) -> None:
    _SESSION_TEMP[:] = [tmp_path_factory]


def _copy_empty_mlflow_store(to: Path) -> None:
    if not _MLFLOW_TEMPLATE:
        from detrforge.platform.tracking import Tracker

        path = _SESSION_TEMP[0].mktemp("mlflow-template") / "mlflow.db"
        Tracker(f"sqlite:///{path}").client.search_experiments()
        _MLFLOW_TEMPLATE.append(path)
    to.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copyfile(_MLFLOW_TEMPLATE[0], to)
    to.chmod(0o600)


def free_port() -> int:
    """A loopback port nothing listens on *now*, for a client to be refused on (no server).

    The port is released on return, so another process may take it before anyone binds it: a
    server must not be started on it. A server is handed a socket bound to port 0 where it can
    take one (moto in ``fixtures_s3``); where only a port number can be given (Ray, ``detrforge
    serve``) it is started through ``start_on_reserved_ports``.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_ADDRESS_IN_USE = re.compile(r"already in use|address in use|failed to bind|EADDRINUSE", re.I)

T = TypeVar("T")


def start_on_reserved_ports(count: int, start: Callable[[list[int]], T]) -> T:
    """``start(ports)`` on ``count`` loopback ports reserved until just before it binds them.

    For servers that take port *numbers* (Ray's GCS, dashboard and agent ports), which cannot be
    handed a bound socket. Each port is held by a bound socket without ``SO_REUSEADDR`` while the
    others are chosen (so no two are equal and no other process gets them meanwhile), released
    immediately before ``start``, and the start is retried once on fresh ports when it fails
    with "address in use": the window between release and bind is short but not zero. ``start``
    must stop whatever it started before raising.
    """
    for attempt in (1, 2):
        held = []
        for _ in range(count):
            sock = socket.socket()  # no SO_REUSEADDR: the kernel will not hand this port out
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
        ports = [int(sock.getsockname()[1]) for sock in held]
        for sock in held:
            sock.close()
        try:
            return start(ports)
        except Exception as exc:
            if attempt == 2 or not _ADDRESS_IN_USE.search(str(exc)):
                raise
    raise AssertionError("unreachable")


def train_worker_pids(head: LocalRayHead) -> list[int]:
    """PIDs of live Ray Train worker processes of ``head`` (not of other Ray heads on the host)."""
    assert head.process is not None
    pids = []
    for proc in psutil.Process(head.process.pid).children(recursive=True):
        try:
            text = " ".join(proc.cmdline()) + " " + proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "RayTrainWorker" in text:
            pids.append(proc.pid)
    return pids


def wait_until(
    read: Callable[[], Any],
    *,
    timeout_s: float,
    what: str | None = None,
    every_s: float = 1.0,
    until: Callable[[Any], Any] = bool,
    fail_if: Callable[[Any], str | None] | None = None,
    alive: Callable[[], str | None] | None = None,
    explain: Callable[[], str] | None = None,
) -> Any:
    """Poll ``read()`` until ``until(value)``; return that value.

    Fails at once (not at the timeout) when ``fail_if(value)`` gives a reason (e.g. the job ended
    in another terminal state) or ``alive()`` does (e.g. the Ray head the wait depends on died).
    Every failure names ``what`` was awaited and the last value read; a timeout adds what
    ``explain()`` says (e.g. :func:`describe_cluster`: what holds the cluster).
    """
    what = what or getattr(read, "__qualname__", "the condition")
    deadline = time.monotonic() + timeout_s
    value: Any = None
    while True:
        value = read()
        if until(value):
            return value
        reason = fail_if(value) if fail_if is not None else None
        if reason is None and alive is not None:
            reason = alive()
        if reason:
            raise AssertionError(
                f"gave up waiting for {what}: {reason}; last value: {value!r:.2000}"
            )
        if time.monotonic() >= deadline:
            context = f"; {explain()}" if explain is not None else ""
            raise AssertionError(
                f"waited {timeout_s:g} s for {what}; last value: {value!r:.2000}{context}"
            )
        time.sleep(every_s)


TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


def head_alive(head: LocalRayHead) -> Callable[[], str | None]:
    """An ``alive`` check for ``wait_until``: why ``head`` is gone, None while its process runs."""

    def check() -> str | None:
        if head.alive():
            return None
        code = head.process.poll() if head.process is not None else None
        return f"the Ray head exited (code {code}); see {head.log_path}"

    return check


def job_wait(
    read: Callable[[], dict[str, Any]],
    *,
    what: str,
    timeout_s: float,
    want: str | None = None,
    alive: Callable[[], str | None] | None = None,
    every_s: float = 2.0,
) -> dict[str, Any]:
    """Wait for a job (as ``read`` returns it) to reach a terminal state, or ``want`` exactly.

    With ``want``, a different terminal state fails at once rather than at the timeout.
    """

    def other_end(job: dict[str, Any]) -> str | None:
        if want is not None and job["state"] in TERMINAL_STATES and job["state"] != want:
            return f"it ended {job['state']}: {job.get('error')}"
        return None

    return dict(
        wait_until(
            read,
            until=lambda job: job["state"] == want if want else job["state"] in TERMINAL_STATES,
            fail_if=other_end,
            alive=alive,
            timeout_s=timeout_s,
            what=what,
            every_s=every_s,
        )
    )


@pytest.fixture(scope="session")
def ray_head() -> Iterator[LocalRayHead]:
    """A real single-node Ray head (2 CPUs) on loopback, on free ports, for the whole session."""
    # In the system temp dir (TMPDIR), kept short: Ray's socket paths live under it.
    temp_dir = Path(tempfile.mkdtemp(prefix="dfray-"))

    def start(ports: list[int]) -> LocalRayHead:
        # LocalRayHead.start stops its own process when it fails.
        gcs_port, dashboard_port = ports
        return LocalRayHead(
            temp_dir=temp_dir, gcs_port=gcs_port, dashboard_port=dashboard_port, num_cpus=2
        ).start()

    head = start_on_reserved_ports(2, start)
    yield head
    head.stop()
    shutil.rmtree(temp_dir, ignore_errors=True)


# Ray job states after which a job holds nothing on the cluster.
_RAY_ENDED = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


def describe_cluster(address: str) -> str:
    """What holds the cluster at ``address`` (its dashboard URL): unfinished jobs, and tasks and
    actors not done, for a failure message when a wait on a job runs out."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors, list_tasks

    try:
        jobs = [
            f"{job.submission_id} {getattr(job.status, 'value', job.status)}: {job.entrypoint}"
            for job in JobSubmissionClient(address).list_jobs()
            if getattr(job.status, "value", job.status) not in _RAY_ENDED
        ]
        tasks = [
            f"{t.name} {t.state}"
            for t in list_tasks(address=address, filters=[("state", "!=", "FINISHED")], limit=50)
            if t.state != "FAILED"
        ]
        actors = [
            f"{a.class_name} {a.state}"
            for a in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=50)
        ]
    except Exception as exc:  # a diagnosis must not hide the failure it explains
        return f"(cluster state unavailable: {exc!r})"
    return f"unfinished jobs: {jobs}; tasks not finished: {tasks}; live actors: {actors}"


@pytest.fixture(autouse=True)
def _shared_head_left_idle(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test on the worker's shared Ray head must leave no job running there.

    The head has 2 CPUs for every test on its xdist worker: a job one test leaves behind holds
    them, and the next test's evaluation waits for a CPU until its own timeout (how CI once
    failed two unrelated tests). After the test, jobs still running get a short grace to end
    (a driver exits a moment after its job's work is recorded), then are stopped, and the test
    that left them fails naming them.
    """
    yield
    if "ray_head" not in request.fixturenames:
        return
    from ray.job_submission import JobSubmissionClient

    head: LocalRayHead = request.getfixturevalue("ray_head")
    if not head.alive():
        return
    client = JobSubmissionClient(head.dashboard_url)

    def running() -> dict[str, str]:
        return {
            str(job.submission_id): f"{job.entrypoint} ({getattr(job.status, 'value', job.status)})"
            for job in client.list_jobs()
            if getattr(job.status, "value", job.status) not in _RAY_ENDED and job.submission_id
        }

    deadline = time.monotonic() + 30
    while (left := running()) and time.monotonic() < deadline:
        time.sleep(1.0)
    for submission_id in left:
        client.stop_job(submission_id)
    if left:
        state = describe_cluster(head.dashboard_url)
        wait_until(lambda: not running(), timeout_s=60, what="the left-over jobs to stop")
        pytest.fail(f"the test left jobs running on the shared Ray head (now stopped): {state}")


@pytest.fixture(scope="session")
def synth_ds(tmp_path_factory: pytest.TempPathFactory) -> DatasetInfo:
    out = tmp_path_factory.mktemp("synth") / "ds"
    return synth_dataset(out, seed=0, train_images=16, valid_images=8, image_size=128)


@dataclass
class ApiHarness:
    """The API app in-process with its settings and a key per role."""

    client: TestClient
    settings: Settings
    keys: dict[Role, str]
    # Why the cluster behind the API is gone (None while it is up): waits on jobs fail fast then.
    alive: Callable[[], str | None] | None = None

    def headers(self, role: Role = Role.admin) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def call(self, method: str, path: str, body: Any = None, role: Role = Role.approver) -> Any:
        """``method /api/v1{path}`` as ``role``; asserts a 2xx and returns the JSON it answered."""
        response = self.client.request(
            method, f"/api/v1{path}", json=body, headers=self.headers(role)
        )
        status = response.status_code
        assert status < 300, f"{method} {path}: {status} {response.text}"
        return response.json()

    def promote(self, model: str, version: int, *, timeout_s: float = 420) -> dict[str, Any]:
        """Promote ``model`` v``version`` to production; the promotion once applied or failed.

        Fails fast when the cluster dies; a wait that runs out says what holds the cluster.
        """
        path = f"/models/{model}/versions/{version}/promotions"
        promotion = self.call("POST", path, {"to": "production"})
        ended = wait_until(
            lambda: self.call("GET", f"/promotions/{promotion['id']}"),
            until=lambda p: p["state"] in ("applied", "failed"),
            timeout_s=timeout_s,
            every_s=2.0,
            what=f"promotion {promotion['id']} of {model} v{version} to end",
            alive=self.alive,
            explain=lambda: describe_cluster(self.settings.ray_address),
        )
        return dict(ended)

    def submit(self, spec: dict[str, Any], role: Role = Role.operator) -> Any:
        return self.client.post("/api/v1/finetune-jobs", json=spec, headers=self.headers(role))

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/finetune-jobs/{job_id}", headers=self.headers())
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait(self, job_id: str, *, timeout_s: float = 600) -> dict[str, Any]:
        """The job once it is terminal (any terminal state); fails fast if the cluster dies."""
        return job_wait(
            lambda: self.job(job_id),
            what=f"job {job_id} to end",
            timeout_s=timeout_s,
            alive=self.alive,
        )


def make_settings(
    home: Path, *, database_url: str, ray_address: str, artifact_root: str | None
) -> Settings:
    """Settings for a test API on ``home``: every store explicit, MLflow a copy of an empty
    migrated store (a real SQLite MLflow backend, skipped only the migrations)."""
    if _SESSION_TEMP and not (home / "mlflow.db").exists():
        _copy_empty_mlflow_store(home / "mlflow.db")
    return Settings(
        home=home,
        database_url=database_url,
        ray_address=ray_address,
        artifact_root=artifact_root,
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        reconcile_interval_s=1.0,
        data_roots=tuple(DATA_ROOTS),
    )


def harness(
    settings: Settings, *, alive: Callable[[], str | None] | None = None
) -> Iterator[ApiHarness]:
    from detrforge.api.main import build_services

    services = build_services(settings)
    keys = {role: services.keys.create(name=f"test-{role.value}", role=role)[1] for role in Role}
    with TestClient(create_app(settings, services=services)) as client:
        yield ApiHarness(client=client, settings=settings, keys=keys, alive=alive)


@pytest.fixture
def offline_api(tmp_path: Path, database_url: str) -> Iterator[ApiHarness]:
    """The API wired to a Ray address where nothing listens: any submission attempt would 503."""
    settings = make_settings(
        tmp_path / "home",
        database_url=database_url,
        ray_address=f"http://127.0.0.1:{free_port()}",
        artifact_root=None,
    )
    yield from harness(settings)


@pytest.fixture
def cluster_api(tmp_path: Path, ray_head: LocalRayHead) -> Iterator[ApiHarness]:
    """The API against the real local Ray head, file:// artifacts, a real MLflow store."""
    settings = make_settings(
        tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'registry.db'}",
        ray_address=ray_head.dashboard_url,
        artifact_root=None,
    )
    yield from harness(settings, alive=head_alive(ray_head))
    shutil.rmtree(tmp_path / "home" / "artifacts", ignore_errors=True)
