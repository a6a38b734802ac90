"""Real-cluster fixtures: a local Ray head on loopback, a synthetic dataset, the API in-process."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def wait_until(predicate: Callable[[], Any], *, timeout_s: float, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


@pytest.fixture(scope="session")
def ray_head() -> Iterator[LocalRayHead]:
    """A real single-node Ray head (2 CPUs) on loopback, on free ports, for the whole session."""
    # In the system temp dir (TMPDIR), kept short: Ray's socket paths live under it.
    temp_dir = Path(tempfile.mkdtemp(prefix="dfray-"))
    head = LocalRayHead(
        temp_dir=temp_dir, gcs_port=free_port(), dashboard_port=free_port(), num_cpus=2
    ).start()
    yield head
    head.stop()
    shutil.rmtree(temp_dir, ignore_errors=True)


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

    def headers(self, role: Role = Role.admin) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def submit(self, spec: dict[str, Any], role: Role = Role.operator) -> Any:
        return self.client.post("/api/v1/finetune-jobs", json=spec, headers=self.headers(role))

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/finetune-jobs/{job_id}", headers=self.headers())
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait(self, job_id: str, *, timeout_s: float = 600) -> dict[str, Any]:
        return dict(
            wait_until(
                lambda: (
                    (j := self.job(job_id))["state"] in {"SUCCEEDED", "FAILED", "CANCELLED"} and j
                ),
                timeout_s=timeout_s,
                every_s=2.0,
            )
        )


def make_settings(
    home: Path, *, database_url: str, ray_address: str, artifact_root: str | None
) -> Settings:
    return Settings(
        home=home,
        database_url=database_url,
        ray_address=ray_address,
        artifact_root=artifact_root,
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        reconcile_interval_s=1.0,
        data_roots=tuple(DATA_ROOTS),
    )


def harness(settings: Settings) -> Iterator[ApiHarness]:
    from detrforge.api.main import build_services

    services = build_services(settings)
    keys = {role: services.keys.create(name=f"test-{role.value}", role=role)[1] for role in Role}
    with TestClient(create_app(settings, services=services)) as client:
        yield ApiHarness(client=client, settings=settings, keys=keys)


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
    yield from harness(settings)
    shutil.rmtree(tmp_path / "home" / "artifacts", ignore_errors=True)
