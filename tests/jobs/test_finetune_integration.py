"""A real 2-worker RF-DETR fine-tune on a real local Ray cluster, tracked in a real MLflow store.

Nano at 128 px on a 16-image synthetic set; every test submits through the REST API.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from detrforge.detector.data import DatasetInfo
from detrforge.platform.cluster import LocalRayHead
from detrforge.platform.tags import Tag
from detrforge.platform.tracking import Tracker
from fixtures_cluster import (
    DATA_ROOTS,
    TERMINAL_STATES,
    TINY_SPEC,
    ApiHarness,
    head_alive,
    job_wait,
    start_on_reserved_ports,
    train_worker_pids,
    wait_until,
)
from fixtures_mlflow import alias_checkpoint_sha256

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _tracker(api: ApiHarness) -> Tracker:
    return Tracker(api.settings.resolved_tracking_uri())


def _sha256_of_mlflow_model(tracker: Tracker, run_id: str, tmp_path: Path) -> str:
    local = tracker.client.download_artifacts(
        run_id, "model/checkpoint_best_total.pth", str(tmp_path / "dl")
    )
    return hashlib.sha256(Path(local).read_bytes()).hexdigest()


def _check_finished_job(
    api: ApiHarness, job: dict[str, Any], tmp_path: Path, *, workers: int = 2, epochs: int = 2
) -> None:
    assert job["state"] == "SUCCEEDED", job.get("error")
    tracker = _tracker(api)
    run = tracker.client.get_run(job["mlflow_run_id"])
    assert run.data.tags["detrforge.job_id"] == job["id"]
    assert run.data.tags["detrforge.dataset_fingerprint"] == job["dataset_fingerprint"]
    params = run.data.params
    assert params["model_size"] == "nano"
    assert params["resolution"] == "128"
    assert params["num_workers"] == str(workers)
    assert params["epochs"] == str(epochs)
    # One point per epoch for the per-epoch metrics.
    for key in ("train/loss", "lr", "throughput/img_s", "bbox/AP", "bbox/AP50", "bbox/AP75"):
        steps = [step for step, _ in tracker.history(run.info.run_id, key)]
        assert steps == list(range(epochs)), key
    assert all(v > 0 for _, v in tracker.history(run.info.run_id, "throughput/img_s"))
    assert 0.0 <= job["metrics"]["bbox/AP"] <= 1.0
    ap_by_epoch = [v for _, v in tracker.history(run.info.run_id, "bbox/AP")]
    assert job["metrics"]["best/bbox/AP"] == max(ap_by_epoch)
    assert job["progress"]["total_steps"] == job["progress"]["step"]
    # The model artifact in MLflow is byte-identical to what the API reports.
    assert "model/checkpoint_best_total.pth" in tracker.list_artifacts(run.info.run_id, "model")
    assert _sha256_of_mlflow_model(tracker, run.info.run_id, tmp_path) == job["model_sha256"]
    assert job["model_uri"].endswith(f"jobs/{job['id']}/model/checkpoint_best_total.pth")
    assert "/checkpoint_" in job["checkpoint_uri"]


def _assert_released_in_mlflow(
    api: ApiHarness, model: str, version: dict[str, Any], job: dict[str, Any], tmp_path: Path
) -> None:
    """The job's version in MLflow hangs off the job's own run; once promoted to production,
    ``models:/<model>@production`` downloads the job's model bytes with MLflow's own client."""
    client = _tracker(api).client
    mirrored = client.get_model_version(model, version["mlflow_version"])
    assert mirrored.run_id == job["mlflow_run_id"]
    assert mirrored.tags[Tag.CHECKPOINT_SHA256] == job["model_sha256"]
    response = api.client.post(
        f"/api/v1/models/{model}/versions/{version['version']}/promotions",
        json={"to": "production"},
        headers=api.headers(),
    )
    assert response.status_code == 202, response.text
    path = f"/api/v1/promotions/{response.json()['id']}"
    promotion = wait_until(
        lambda: api.client.get(path, headers=api.headers()).json(),
        until=lambda p: p["state"] in ("applied", "failed"),
        what=f"{path} to end",
        timeout_s=60,
        every_s=0.5,
    )
    assert promotion["state"] == "applied", promotion["message"]
    wait_until(
        lambda: client.get_registered_model(model).aliases.get("production"),
        until=lambda alias: str(alias) == version["mlflow_version"],
        what=f"MLflow's production alias of {model} to name v{version['version']}",
        timeout_s=30,
        every_s=0.2,
    )
    uri = api.settings.resolved_tracking_uri()
    sha256 = alias_checkpoint_sha256(uri, model, "production", tmp_path / "released")
    assert sha256 == job["model_sha256"]


def test_finetune_two_workers_file_artifacts(
    cluster_api: ApiHarness, synth_ds: DatasetInfo, tmp_path: Path, ray_head: LocalRayHead
) -> None:
    response = cluster_api.submit({**TINY_SPEC, "dataset": synth_ds.root})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["dataset_fingerprint"] == synth_ds.fingerprint
    assert created["state"] in {"PENDING", "RUNNING"}
    job = cluster_api.wait(created["id"])
    _check_finished_job(cluster_api, job, tmp_path)
    # The stored model's bytes hash to the reported sha256 (file:// store).
    local = Path(job["model_uri"].removeprefix("file://"))
    assert hashlib.sha256(local.read_bytes()).hexdigest() == job["model_sha256"]
    logs = cluster_api.client.get(
        f"/api/v1/finetune-jobs/{job['id']}/logs", params={"tail": 5}, headers=cluster_api.headers()
    )
    assert f"job {job['id']} SUCCEEDED" in logs.text
    streamed = cluster_api.client.get(
        f"/api/v1/finetune-jobs/{job['id']}/logs",
        params={"follow": "true"},
        headers=cluster_api.headers(),
    )
    assert streamed.status_code == 200
    assert f"job {job['id']} SUCCEEDED" in streamed.text
    assert train_worker_pids(ray_head) == []

    # Registered by job id: the version keeps the job's lineage and the bytes' sha256.
    headers = cluster_api.headers()
    created_model = cluster_api.client.post(
        "/api/v1/models", json={"name": "tiny"}, headers=headers
    )
    assert created_model.status_code == 201, created_model.text
    version = cluster_api.client.post(
        "/api/v1/models/tiny/versions", json={"job_id": job["id"]}, headers=headers
    ).json()
    assert (version["source_job_id"], version["mlflow_run_id"]) == (job["id"], job["mlflow_run_id"])
    assert version["checkpoint_sha256"] == job["model_sha256"]
    assert (version["model_size"], version["resolution"]) == ("nano", 128)
    _assert_released_in_mlflow(cluster_api, "tiny", version, job, tmp_path)

    # The trained model, evaluated with pycocotools by job id (evaluation determinism on a model
    # with AP well above zero: test_benchmark_integration).
    created = cluster_api.client.post(
        "/api/v1/evaluations",
        json={"job_id": job["id"], "dataset": synth_ds.root},
        headers=cluster_api.headers(),
    )
    assert created.status_code == 201, created.text
    path = f"/api/v1/evaluations/{created.json()['id']}"
    done = job_wait(
        lambda: cluster_api.client.get(path, headers=cluster_api.headers()).json(),
        what=f"evaluation {path} to succeed",
        want="SUCCEEDED",
        timeout_s=300,
        alive=head_alive(ray_head),
    )
    assert done["spec"]["checkpoint_sha256"] == job["model_sha256"]
    result = cluster_api.client.get(f"{path}/result", headers=cluster_api.headers()).json()
    assert len(result["stats"]) == 12
    assert all(v is None or 0.0 <= v <= 1.0 for v in result["stats"].values())
    assert [row["name"] for row in result["per_class"]] == ["square"]


def test_killed_worker_resumes_from_checkpoint(
    cluster_api: ApiHarness, synth_ds: DatasetInfo, ray_head: LocalRayHead
) -> None:
    # Four epochs: the kill lands after two checkpoints with two epochs still to run.
    spec = {**TINY_SPEC, "dataset": synth_ds.root, "epochs": 4, "max_failures": 2}
    job_id = cluster_api.submit(spec).json()["id"]
    tracker = _tracker(cluster_api)

    def checkpoints() -> tuple[str, int]:
        job = cluster_api.job(job_id)
        run_id = job["mlflow_run_id"]
        return job["state"], len(tracker.history(run_id, "checkpoint/epoch")) if run_id else 0

    wait_until(
        checkpoints,
        until=lambda seen: seen[1] >= 2,
        fail_if=lambda seen: f"the job ended {seen[0]}" if seen[0] in TERMINAL_STATES else None,
        alive=head_alive(ray_head),
        timeout_s=300,
        what=f"job {job_id} to record two checkpoints",
    )
    victims = train_worker_pids(ray_head)
    assert len(victims) == 2
    os.kill(victims[-1], signal.SIGKILL)

    job = cluster_api.wait(job_id)
    assert job["state"] == "SUCCEEDED", job.get("error")
    run_id = job["mlflow_run_id"]
    starts = [v for _, v in tracker.history(run_id, "attempt/start_epoch")]
    resumed = [v for _, v in tracker.history(run_id, "attempt/resumed")]
    assert resumed == [0.0, 1.0], f"Ray handed the restarted group no checkpoint: {resumed}"
    assert starts[0] == 0 and len(starts) == 2, starts
    assert starts[1] >= 1, f"the restarted worker group began at epoch {starts[1]}, not resumed"
    epochs = [step for step, _ in tracker.history(run_id, "train/loss")]
    assert epochs.count(0) == 1, f"epoch 0 ran again after the failure: {epochs}"
    assert max(epochs) == 3


def test_cancel_stops_job_and_workers(
    cluster_api: ApiHarness, synth_ds: DatasetInfo, ray_head: LocalRayHead
) -> None:
    job_id = cluster_api.submit({**TINY_SPEC, "dataset": synth_ds.root, "epochs": 50}).json()["id"]
    wait_until(
        lambda: len(train_worker_pids(ray_head)) == 2,
        alive=head_alive(ray_head),
        timeout_s=180,
        what="two Ray Train workers",
    )
    started = time.monotonic()
    response = cluster_api.client.post(
        f"/api/v1/finetune-jobs/{job_id}/cancel", headers=cluster_api.headers()
    )
    assert response.status_code == 202
    job = cluster_api.wait(job_id, timeout_s=30)
    assert job["state"] == "CANCELLED"
    assert time.monotonic() - started < 30
    wait_until(
        lambda: train_worker_pids(ray_head) == [], timeout_s=15, what="no Ray Train worker left"
    )
    # Cancelling again is a no-op on a terminal job.
    again = cluster_api.client.post(
        f"/api/v1/finetune-jobs/{job_id}/cancel", headers=cluster_api.headers()
    )
    assert again.json()["state"] == "CANCELLED"


def _serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``detrforge serve`` on a port reserved until it binds it, once it answers; and its URL."""

    def start_on(ports: list[int]) -> tuple[subprocess.Popen[bytes], str]:
        with log.open("ab") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "detrforge.cli", "serve"],
                env={**env, "DETRFORGE_PORT": str(ports[0])},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{ports[0]}"
        try:
            wait_until(lambda: _up(base, server, log), timeout_s=60, every_s=0.5, what="serve up")
        except BaseException:
            server.kill()
            server.wait(timeout=30)
            raise
        return server, base

    return start_on_reserved_ports(1, start_on)


def test_api_killed_while_a_job_runs_reconciles_it_on_restart(
    tmp_path: Path, ray_head: LocalRayHead, synth_ds: DatasetInfo
) -> None:
    """``kill -9`` the API mid-job; the job finishes on Ray while no API is up (checked, not
    slept on); the restarted API reads Ray's verdict and completes the row."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from detrforge.platform.db import make_engine, make_session_factory
    from detrforge.registry.jobs import JobStore

    home = tmp_path / "home"
    env = {
        **os.environ,
        "DETRFORGE_HOME": str(home),
        "RAY_ADDRESS": ray_head.dashboard_url,
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "DETRFORGE_DATA_ROOTS": os.pathsep.join(str(root) for root in DATA_ROOTS),
    }
    log = tmp_path / "serve.log"
    server, base = _serve(env, log)
    try:
        headers = {"Authorization": f"Bearer {(home / 'admin.key').read_text()}"}
        job_id = httpx.post(
            f"{base}/api/v1/finetune-jobs",
            json={**TINY_SPEC, "dataset": synth_ds.root, "epochs": 1},
            headers=headers,
            timeout=60,
        ).json()["id"]
        wait_until(
            lambda: len(train_worker_pids(ray_head)) == 2,
            alive=head_alive(ray_head),
            timeout_s=180,
            what="two Ray Train workers",
        )
        server.kill()  # SIGKILL: no shutdown hook, no last reconcile
        assert server.wait(timeout=30) == -signal.SIGKILL

        ray_jobs = JobSubmissionClient(ray_head.dashboard_url)
        terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        status = wait_until(
            lambda: ray_jobs.get_job_status(job_id),
            until=lambda s: s in terminal,
            alive=head_alive(ray_head),
            timeout_s=300,
            what=f"Ray job {job_id} to end while no API is up",
        )
        assert status == JobStatus.SUCCEEDED, ray_jobs.get_job_logs(job_id)[-2000:]
        # Finished while no API was up: the registry row still says what the API last saw.
        engine = make_engine(f"sqlite:///{home / 'registry.db'}")
        try:
            row = JobStore(make_session_factory(engine)).get(job_id)
        finally:
            engine.dispose()
        assert not row.is_terminal and row.model_sha256 is None, row

        server, base = _serve(env, log)

        job = job_wait(
            lambda: httpx.get(f"{base}/api/v1/finetune-jobs/{job_id}", headers=headers).json(),
            what=f"the restarted API to reconcile job {job_id}",
            want="SUCCEEDED",
            timeout_s=60,
            every_s=1,
        )
        assert job["model_sha256"] and job["mlflow_run_id"]
        assert job["metrics"]["epoch"] == 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)


def _up(base: str, server: subprocess.Popen[bytes], log: Path) -> bool:
    """Whether the API answers; fails at once (with its log) if the server process died."""
    if server.poll() is not None:
        raise AssertionError(f"serve exited {server.returncode}:\n{log.read_text()[-3000:]}")
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
