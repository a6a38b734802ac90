"""Jobs that run anywhere Ray runs, on the real embedded head: the entrypoint is ``python -m``
resolved on the node, every job carries the API's detrforge version and fails at once, with a
clear error, on a node that runs another; with an ``s3://`` artifact root the job is sent its
dataset's copy in the store and nothing naming the API's machine.

Each job here is submitted by an API whose version differs from the node's, so it ends in
seconds, before Ray or any training starts: what is tested is what reaches the cluster.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from detrforge import __version__
from detrforge.api.main import build_services, create_app, job_env
from detrforge.detector.data import DatasetInfo
from detrforge.platform.cluster import LocalRayHead
from detrforge.platform.launcher import API_VERSION_ENV, Launcher
from detrforge.platform.settings import Settings
from detrforge.registry.entities import Role
from fixtures_cluster import TINY_SPEC, ApiHarness, head_alive, make_settings

pytestmark = [pytest.mark.ray]

OTHER_VERSION = "0.0.1"
MISMATCH = (
    f"detrforge {__version__} on this node, the API is {OTHER_VERSION}: install the same version "
    "on the cluster's image"
)


def _api_of_another_version(
    settings: Settings, head: LocalRayHead
) -> Iterator[tuple[ApiHarness, Launcher]]:
    """The API's own wiring, except that its launcher says the API runs ``OTHER_VERSION``."""
    services = build_services(settings)
    launcher = services.jobs.launcher = Launcher(
        settings.resolved_ray_address(),
        env=job_env(settings),
        python=settings.job_python,
        api_version=OTHER_VERSION,
    )
    keys = {role: services.keys.create(name=f"test-{role.value}", role=role)[1] for role in Role}
    with TestClient(create_app(settings, services=services)) as client:
        api = ApiHarness(client=client, settings=settings, keys=keys, alive=head_alive(head))
        yield api, launcher


def _failed_job(api: ApiHarness, launcher: Launcher, dataset: str) -> tuple[dict[str, Any], Any]:
    """Submit a tiny fine-tune of ``dataset``; the job once it ended, and Ray's record of it."""
    response = api.submit({**TINY_SPEC, "dataset": dataset, "num_workers": 1})
    assert response.status_code == 201, response.text
    job = api.wait(response.json()["id"], timeout_s=120)
    return job, launcher.client.get_job_info(job["id"])


def test_a_job_fails_on_a_node_of_another_version(
    tmp_path: Path, ray_head: LocalRayHead, synth_ds: DatasetInfo
) -> None:
    settings = make_settings(
        tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'registry.db'}",
        ray_address=ray_head.dashboard_url,
        artifact_root=None,
    )
    for api, launcher in _api_of_another_version(settings, ray_head):
        job, info = _failed_job(api, launcher, synth_ds.root)
        # The driver's own failure path: the reason is the job's error, from its MLflow run.
        assert job["state"] == "FAILED", job
        assert job["error"] == MISMATCH
        assert job["mlflow_run_id"]
        # `python` is this venv's on the embedded head (its PATH): a `python` without detrforge
        # would have failed with ModuleNotFoundError and left no run.
        argv = shlex.split(info.entrypoint)
        assert argv[:3] == ["python", "-m", "detrforge.jobs.finetune"]
        assert info.runtime_env["env_vars"][API_VERSION_ENV] == OTHER_VERSION
        # A file:// root means one shared filesystem: the local path is sent as it is.
        assert json.loads(argv[argv.index("--spec") + 1])["dataset"] == synth_ds.root


def test_with_s3_artifacts_the_job_reads_the_dataset_from_the_store(
    tmp_path: Path, ray_head: LocalRayHead, s3_bucket: str, synth_ds: DatasetInfo
) -> None:
    home = tmp_path / "home"
    root = f"{s3_bucket}/df"
    settings = make_settings(
        home,
        database_url=f"sqlite:///{tmp_path / 'registry.db'}",
        ray_address=ray_head.dashboard_url,
        artifact_root=root,
    )
    for api, launcher in _api_of_another_version(settings, ray_head):
        job, info = _failed_job(api, launcher, synth_ds.root)
        assert job["error"] == MISMATCH
        staged = f"{root}/datasets/{synth_ds.fingerprint}"
        # The job row keeps the request as the user made it; the job got the store's copy.
        assert job["spec"]["dataset"] == synth_ds.root
        argv = shlex.split(info.entrypoint)
        assert json.loads(argv[argv.index("--spec") + 1])["dataset"] == staged
        env = info.runtime_env["env_vars"]
        sent = [info.entrypoint, *(f"{k}={v}" for k, v in env.items())]
        # MLFLOW_TRACKING_URI is the one exception: the test tracks in an embedded SQLite file.
        assert env["MLFLOW_TRACKING_URI"] == settings.mlflow_tracking_uri
        sent.remove(f"MLFLOW_TRACKING_URI={settings.mlflow_tracking_uri}")
        for path in (str(home), str(tmp_path), synth_ds.root, sys.prefix, sys.executable):
            assert not [text for text in sent if path in text], path
        assert "DETRFORGE_HOME" not in env
