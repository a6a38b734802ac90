"""Benchmarks land on the node that has the target's hardware, on a real two-node Ray cluster.

The cluster is ``fixtures_topology.wheel_cluster``: a head (1 CPU, the Jobs API) and a worker node
that alone offers the custom resource ``hw_topo``, both from ``ray start`` in a venv where
detrforge is the built wheel. The API here uses SQLite and ``file://`` artifacts (one machine);
``test_production_topology.py`` runs the same cluster with PostgreSQL, an MLflow server and S3.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from detrforge.registry.entities import Role
from fixtures_cluster import ApiHarness, harness, job_wait, make_settings
from fixtures_topology import WORKER_RESOURCE, WheelCluster

# On the xdist worker that runs the topology test, so the session starts one such cluster.
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.xdist_group("wheel_cluster")]


@pytest.fixture
def bench_api(tmp_path: Path, wheel_cluster: WheelCluster) -> Iterator[ApiHarness]:
    settings = make_settings(
        tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'registry.db'}",
        ray_address=wheel_cluster.dashboard_url,
        artifact_root=None,
    )
    yield from harness(settings, alive=wheel_cluster.alive)


def _create_target(api: ApiHarness, name: str, resources: dict[str, float]) -> None:
    response = api.client.post(
        "/api/v1/hardware-targets",
        json={"name": name, "resources": resources, "num_threads": 1},
        headers=api.headers(Role.approver),
    )
    assert response.status_code == 201, response.text


def _wait(api: ApiHarness, job_id: str, kind: str = "benchmarks") -> dict[str, Any]:
    """The job once terminal; ends at once on any terminal state or if the cluster dies."""

    def read() -> dict[str, Any]:
        return dict(api.client.get(f"/api/v1/{kind}/{job_id}", headers=api.headers()).json())

    job = job_wait(read, what=f"{kind} job {job_id} to end", timeout_s=400, alive=api.alive)
    if job["state"] != "SUCCEEDED":  # the driver's own account, for the failure message
        logs = api.client.get(f"/api/v1/finetune-jobs/{job_id}/logs", headers=api.headers())
        job["error"] = f"{job['error']}\n--- job log ---\n{logs.text[-4000:]}"
    return job


def test_benchmark_runs_on_the_node_with_the_resource(
    bench_api: ApiHarness, wheel_cluster: WheelCluster, nano_checkpoint: Path, shapes_dataset: Path
) -> None:
    _create_target(bench_api, "cpu-x86", {WORKER_RESOURCE: 1})
    body = {
        "checkpoint": str(nano_checkpoint),
        "model_size": "nano",
        "resolution": 128,
        "target": "cpu-x86",
        "warmup": 1,
        "runs": 5,
        "dataset": str(shapes_dataset),
    }
    created = bench_api.client.post("/api/v1/benchmarks", json=body, headers=bench_api.headers())
    assert created.status_code == 201, created.text
    job = _wait(bench_api, created.json()["id"])
    assert job["state"] == "SUCCEEDED", job["error"]
    for key in ("latency_ms/p50", "latency_ms/p95", "latency_ms/p99", "model_ms/p95"):
        assert math.isfinite(job["metrics"][key]) and job["metrics"][key] > 0
    assert job["metrics"]["latency_ms/p50"] <= job["metrics"]["latency_ms/p95"]

    records = bench_api.client.get(
        "/api/v1/benchmark-records", params={"target": "cpu-x86"}, headers=bench_api.headers()
    ).json()
    assert records["total"] == 1
    record = records["items"][0]
    assert record["node_id"] == wheel_cluster.worker_node_id, "ran on a node without the resource"
    assert record["job_id"] == job["id"]
    assert record["runs"] == 5 and record["threads"] == 1
    assert record["target_resources"] == {WORKER_RESOURCE: 1.0}
    env = record["environment"]
    import torch

    assert env["torch"] == torch.__version__
    assert env["rfdetr"] == "1.11.2"
    assert env["checkpoint_sha256"] == record["checkpoint_sha256"]
    assert env["dataset_fingerprint"] == record["dataset_fingerprint"]

    csv = bench_api.client.get(
        "/api/v1/benchmark-records", params={"format": "csv"}, headers=bench_api.headers()
    )
    assert csv.headers["content-type"].startswith("text/csv")
    assert record["job_id"] in csv.text
    summary = bench_api.client.get(
        "/api/v1/benchmark-records/summary", headers=bench_api.headers()
    ).json()
    assert len(summary["items"]) == 1


def test_onnx_backend_ab_with_accuracy(
    bench_api: ApiHarness, nano_checkpoint: Path, pseudo_labelled_dataset: Path
) -> None:
    _create_target(bench_api, "cpu-x86-ort", {WORKER_RESOURCE: 1})
    results = {}
    for backend in ("torch", "onnxruntime"):
        body = {
            "checkpoint": str(nano_checkpoint),
            "model_size": "nano",
            "resolution": 128,
            "target": "cpu-x86-ort",
            "backend": backend,
            "warmup": 1,
            "runs": 3,
            # The model's own detections as ground truth: AP ~0.86, not the untrained model's
            # ~0 on the true shapes, where the two backends would agree whatever they output.
            "dataset": str(pseudo_labelled_dataset),
            "evaluate": True,
        }
        created = bench_api.client.post(
            "/api/v1/benchmarks", json=body, headers=bench_api.headers()
        )
        assert created.status_code == 201, created.text
        job = _wait(bench_api, created.json()["id"])
        assert job["state"] == "SUCCEEDED", job["error"]
        results[backend] = job["metrics"]
    # Same artifact, same split: the exported model's AP matches eager within 0.005 (0..1 units).
    assert results["torch"]["bbox/AP"] > 0.5, "the comparison must not be vacuous"
    assert abs(results["torch"]["bbox/AP50"] - results["onnxruntime"]["bbox/AP50"]) < 0.005
    assert abs(results["torch"]["bbox/AP"] - results["onnxruntime"]["bbox/AP"]) < 0.005


def test_target_no_node_has_is_rejected_at_once(
    bench_api: ApiHarness, nano_checkpoint: Path
) -> None:
    _create_target(bench_api, "gpu-t4", {"accelerator_type:T4": 0.001, "GPU": 1})
    response = bench_api.client.post(
        "/api/v1/benchmarks",
        json={"checkpoint": str(nano_checkpoint), "resolution": 128, "target": "gpu-t4"},
        headers=bench_api.headers(),
    )
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "RESOURCE_UNAVAILABLE"
    assert body["field"] == "target"
    assert "gpu-t4" in body["message"] and "accelerator_type:T4" in body["message"]
    listing = bench_api.client.get("/api/v1/benchmarks", headers=bench_api.headers()).json()
    assert listing["total"] == 0


def test_unknown_target_is_404(bench_api: ApiHarness, nano_checkpoint: Path) -> None:
    response = bench_api.client.post(
        "/api/v1/benchmarks",
        json={"checkpoint": str(nano_checkpoint), "resolution": 128, "target": "nope"},
        headers=bench_api.headers(),
    )
    assert response.status_code == 404
    assert "nope" in response.json()["message"]


def test_evaluating_twice_gives_identical_ap(
    bench_api: ApiHarness, nano_checkpoint: Path, pseudo_labelled_dataset: Path
) -> None:
    results = []
    for _ in range(2):
        created = bench_api.client.post(
            "/api/v1/evaluations",
            json={
                "checkpoint": str(nano_checkpoint),
                "model_size": "nano",
                "resolution": 128,
                "dataset": str(pseudo_labelled_dataset),
            },
            headers=bench_api.headers(),
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        job = _wait(bench_api, job_id, kind="evaluations")
        assert job["state"] == "SUCCEEDED", job["error"]
        results.append(
            bench_api.client.get(
                f"/api/v1/evaluations/{job_id}/result", headers=bench_api.headers()
            ).json()
        )
    first, second = results
    # Where AP is high (pseudo-labels), so a run-to-run change would move it: bit-identical.
    assert first["stats"]["bbox/AP"] > 0.5, "the comparison must not be vacuous"
    assert first["stats"] == second["stats"]
    assert first["per_class"] == second["per_class"]
    assert len(first["per_class"]) == 2
    assert all(v is None or math.isfinite(v) for v in first["stats"].values())
    assert first["eval_fingerprint"] == second["eval_fingerprint"]
