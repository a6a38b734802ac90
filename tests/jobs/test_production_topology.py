"""The whole loop on a cluster shaped like production, over REST.

Ray: two nodes from ``ray start`` in a venv of their own where detrforge is a built wheel
(``fixtures_topology``); MLflow: ``mlflow server`` on PostgreSQL with S3 artifacts
(``fixtures_mlflow``); the registry on PostgreSQL; ``DETRFORGE_ARTIFACT_ROOT`` on S3 (moto). The
API runs from this venv with ``RAY_ADDRESS`` at the cluster. One test, because every step needs
the one before: fine-tune on 2 workers from a local dataset, register it and a local checkpoint,
promote both through AP and latency gates measured on a target only the worker node offers,
roll back, and resolve ``models:/NAME@production`` with MLflow's own client.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from mlflow import MlflowClient

from detrforge.detector.data import DatasetInfo
from detrforge.platform.storage import open_store
from detrforge.registry.entities import Role
from fixtures_cluster import TINY_SPEC, ApiHarness, harness, make_settings
from fixtures_db import POSTGRES_URL_VARIABLE, _fresh_postgres_database
from fixtures_mlflow import MlflowServer, alias_checkpoint_sha256
from fixtures_s3 import S3Server
from fixtures_topology import WORKER_RESOURCE, WheelCluster, listeners

# On the xdist worker that runs the benchmark tests, so the session starts one such cluster.
pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.xdist_group("wheel_cluster"),
]

MODEL = "topology"
TARGET = "edge-box"
LOOPBACK = ("127.0.0.1:", "::ffff:127.0.0.1:", "::1:")


@pytest.fixture
def topology_api(
    tmp_path: Path, wheel_cluster: WheelCluster, mlflow_server: MlflowServer, s3_bucket: str
) -> Iterator[ApiHarness]:
    postgres = os.environ.get(POSTGRES_URL_VARIABLE)
    if not postgres:
        pytest.skip(f"the registry runs on PostgreSQL here: set {POSTGRES_URL_VARIABLE}")
    databases = _fresh_postgres_database(postgres)
    settings = make_settings(
        tmp_path / "home",
        database_url=next(databases),
        ray_address=wheel_cluster.dashboard_url,
        artifact_root=f"{s3_bucket}/detrforge",
    )
    settings = settings.model_copy(update={"mlflow_tracking_uri": mlflow_server.uri})
    yield from harness(settings, alive=wheel_cluster.alive)
    next(databases, None)  # drops the database


def _gate(promotion: dict[str, Any], gate: str) -> dict[str, Any]:
    [result] = [g for g in promotion["gate_results"] if g["gate"] == gate]
    return dict(result)


def _ray_jobs(cluster: WheelCluster) -> list[Any]:
    from ray.job_submission import JobSubmissionClient

    return list(JobSubmissionClient(cluster.dashboard_url).list_jobs())


def _store_keys(s3: S3Server, prefix_uri: str) -> list[str]:
    parsed = urlparse(prefix_uri)
    pages = (
        s3.client()
        .get_paginator("list_objects_v2")
        .paginate(Bucket=parsed.netloc, Prefix=parsed.path.lstrip("/"))
    )
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_fine_tune_gate_promote_and_roll_back_on_a_production_shaped_cluster(
    topology_api: ApiHarness,
    wheel_cluster: WheelCluster,
    mlflow_server: MlflowServer,
    s3_server: S3Server,
    s3_bucket: str,
    synth_ds: DatasetInfo,
    nano_checkpoint: Path,
    tmp_path: Path,
) -> None:
    api = topology_api
    root = f"{s3_bucket}/detrforge"
    # Both nodes' processes (GCS, raylets, dashboard, agents) listen on loopback only.
    sockets = listeners(wheel_cluster)
    assert len({name for _, name in sockets}) >= 4, sockets
    assert [s for s in sockets if not s[0].startswith(LOOPBACK)] == []

    # A dataset on the API's machine only: deleted once the fine-tune is accepted, so the job
    # can only have read the store's copy.
    local = tmp_path / "my-dataset"
    shutil.copytree(synth_ds.root, local)
    created = api.submit({**TINY_SPEC, "dataset": str(local)})
    assert created.status_code == 201, created.text
    shutil.rmtree(local)
    staged = f"{root}/datasets/{synth_ds.fingerprint}/"
    keys = _store_keys(s3_server, staged)
    assert any(k.endswith("train/_annotations.coco.json") for k in keys), keys
    job = api.wait(created.json()["id"], timeout_s=600)
    assert job["state"] == "SUCCEEDED", job["error"]
    assert job["spec"]["dataset"] == str(local)  # the row keeps the path as given
    assert job["model_uri"].startswith(f"{root}/jobs/")
    assert job["checkpoint_uri"].startswith(f"{root}/ray/{job['id']}/")
    assert open_store(root).sha256(job["model_uri"]) == job["model_sha256"]
    run = MlflowClient(tracking_uri=mlflow_server.uri).get_run(job["mlflow_run_id"])
    assert run.data.params["dataset"] == staged.rstrip("/")  # what the job was sent

    # v1: a checkpoint file on the API's machine, copied into the store; in production before
    # any policy exists (no gates, no jobs). v2: the fine-tune, promoted through the gates.
    api.call("POST", "/models", {"name": MODEL}, Role.operator)
    v1 = api.call(
        "POST",
        f"/models/{MODEL}/versions",
        {"checkpoint": str(nano_checkpoint), "model_size": "nano", "resolution": 128},
        Role.operator,
    )
    assert api.promote(MODEL, v1["version"])["state"] == "applied"
    api.call(
        "POST",
        "/hardware-targets",
        {"name": TARGET, "resources": {WORKER_RESOURCE: 1, "CPU": 1}, "num_threads": 1},
    )
    policy = {
        "eval": {"dataset": str(synth_ds.root), "split": "valid"},
        "ap_floor": 0.0,
        "targets": [{"target": TARGET, "p95_sla_ms": 60_000}],
        "benchmark_runs": 10,
        "benchmark_warmup": 1,
    }
    api.call("PUT", f"/models/{MODEL}/policy", policy)
    v2 = api.call("POST", f"/models/{MODEL}/versions", {"job_id": job["id"]}, Role.operator)
    for version in (v1, v2):
        assert version["checkpoint_uri"].startswith(f"{root}/blobs/sha256/"), version
    assert v2["checkpoint_sha256"] == job["model_sha256"] != v1["checkpoint_sha256"]

    promotion = api.promote(MODEL, v2["version"])
    assert promotion["state"] == "applied", promotion["message"]
    ap = _gate(promotion, "ap_floor")
    assert 0.0 <= ap["candidate"] <= 1.0 and ap["passed"], ap
    latency = _gate(promotion, "p95_sla")
    assert latency["target"] == TARGET
    assert latency["passed"] and 0 < latency["candidate"] < 60_000, latency

    # The gate's benchmark ran on the worker node, the only one with the target's resource.
    [record] = api.call("GET", "/benchmark-records", role=Role.viewer)["items"]
    assert record["node_id"] == wheel_cluster.worker_node_id
    assert record["checkpoint_sha256"] == v2["checkpoint_sha256"]

    rolled = api.call("POST", f"/models/{MODEL}/rollback", {"reason": "topology test"})
    assert rolled["version"] == v1["version"] and rolled["stage"] == "production"
    sha = alias_checkpoint_sha256(mlflow_server.uri, MODEL, "production", tmp_path / "served")
    assert sha == v1["checkpoint_sha256"]

    # No job names a path of the API's machine: its venv, its source tree, its home.
    api_paths = {sys.prefix, str(Path(__file__).resolve().parents[2]), str(api.settings.home)}
    ours = {j["id"] for j in api.call("GET", "/jobs?limit=100", role=Role.viewer)["items"]}
    jobs = [j for j in _ray_jobs(wheel_cluster) if j.submission_id in ours]
    # The fine-tune, then the gates' evaluation and benchmark, all on this cluster.
    assert len(jobs) == len(ours) == 3, ours
    for ray_job in jobs:
        assert ray_job.entrypoint.startswith("python -m detrforge.jobs."), ray_job.entrypoint
        env = (ray_job.runtime_env or {}).get("env_vars", {})
        text = " ".join([ray_job.entrypoint, *env.values()])
        leaked = [p for p in api_paths if p in text]
        assert leaked == [], f"job {ray_job.submission_id} names {leaked}: {text[:2000]}"
        assert "DETRFORGE_HOME" not in env
    fine_tune = [j for j in jobs if j.submission_id == job["id"]]
    assert fine_tune and staged.rstrip("/") in fine_tune[0].entrypoint + str(
        fine_tune[0].runtime_env
    )

    # The jobs ran the wheel in the cluster's venv, not this checkout.
    logs = api.client.get(f"/api/v1/finetune-jobs/{job['id']}/logs", headers=api.headers()).text
    installed = wheel_cluster.venv / "lib"
    assert f"from {installed}" in logs and f"python {wheel_cluster.python}" in logs, logs[:3000]
