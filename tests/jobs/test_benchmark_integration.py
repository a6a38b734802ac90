"""Benchmarks land on the node that has the target's hardware, on a real two-node Ray cluster.

The cluster is Ray's own ``cluster_utils.Cluster`` on loopback: a head (1 CPU, the Jobs API)
and a worker node that alone offers the custom resource ``hw_bench_x86``.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from detrforge.platform.cluster import pin_cluster_address, stop_process_tree
from detrforge.registry.entities import Role
from fixtures_cluster import ApiHarness, harness, job_wait, make_settings, start_on_reserved_ports

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _descendants() -> set[int]:
    return {proc.pid for proc in psutil.Process().children(recursive=True)}


def _start_two_nodes(
    temp_dir: Path, ports: list[int], *, worker_args: dict[str, Any] | None = None
) -> tuple[Any, Any, set[int]]:
    """Head (the Jobs API) plus a worker with ``hw_bench_x86``; on failure, nothing is left.

    Each ``add_node`` starts processes (GCS, raylet, dashboard, agents) before it can fail, and a
    node that failed to start is not in the ``Cluster``, so ``Cluster.shutdown`` alone would miss
    it: whatever this call started (the new descendants of this process) is stopped by PID.
    Returns the cluster, the worker node and the PIDs of the processes the start created.
    """
    from ray.cluster_utils import Cluster

    gcs_port, dashboard_port, head_agent_port, worker_agent_port = ports
    before = _descendants()
    cluster = Cluster(initialize_head=False)  # starts nothing yet
    try:
        cluster.add_node(
            node_ip_address="127.0.0.1",
            gcs_server_port=gcs_port,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=dashboard_port,
            dashboard_agent_listen_port=head_agent_port,
            num_cpus=1,
            temp_dir=str(temp_dir),
        )
        worker = cluster.add_node(
            num_cpus=1,
            resources={"hw_bench_x86": 1},
            dashboard_agent_listen_port=worker_agent_port,
            **(worker_args or {}),
        )
        cluster.wait_for_nodes()
        return cluster, worker, _descendants() - before
    except BaseException:
        _stop_cluster(cluster, _descendants() - before)
        raise


def _stop_cluster(cluster: Any, started: set[int]) -> None:
    """``cluster.shutdown()``, then stop by PID any process of ``started`` still alive."""
    try:
        cluster.shutdown()
    finally:
        for pid in started:
            if psutil.pid_exists(pid):
                stop_process_tree(pid, timeout_s=10)


def _nodes_alive(cluster: Any) -> Callable[[], str | None]:
    """An ``alive`` check for waits: why the cluster is gone, None while its nodes run."""

    def check() -> str | None:
        for node in cluster.list_all_nodes():
            if not node.remaining_processes_alive():
                logs = node.get_logs_dir_path()
                return f"a Ray node's processes died (node {node.node_id}); logs in {logs}"
        return None

    return check


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Any]:
    temp_dir = Path(tempfile.mkdtemp(prefix="dfray2-"))
    # Ray's Cluster writes ray_current_cluster into Ray's default temp dir ($RAY_TMPDIR/ray),
    # which a fresh machine does not have: keep it inside this cluster's own folder.
    (temp_dir / "ray").mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", str(temp_dir))
        try:
            cluster, worker, started = start_on_reserved_ports(
                4, lambda ports: _start_two_nodes(temp_dir, ports)
            )
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        try:
            pin_cluster_address(cluster.address, temp_dir)
            yield cluster, worker
        finally:
            _stop_cluster(cluster, started)
            shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_cluster_that_fails_to_start_leaves_no_process_behind() -> None:
    # Runs before the module's cluster exists (file order), so every new process is this one's.
    temp_dir = Path(tempfile.mkdtemp(prefix="dfray3-"))
    (temp_dir / "ray").mkdir()
    before = _descendants()
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("RAY_TMPDIR", str(temp_dir))
            # The head starts; the worker's arguments are refused: a half-started cluster.
            with pytest.raises(TypeError, match="no_such_ray_option"):
                start_on_reserved_ports(
                    4,
                    lambda ports: _start_two_nodes(
                        temp_dir, ports, worker_args={"no_such_ray_option": 1}
                    ),
                )
        left = []
        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.pid not in before and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{proc.pid} {' '.join(proc.cmdline())[:200]}")
            except psutil.NoSuchProcess:
                continue
        assert left == [], "the failed start left processes running"
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def bench_api(tmp_path: Path, two_nodes: Any) -> Iterator[ApiHarness]:
    cluster, _ = two_nodes
    settings = make_settings(
        tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'registry.db'}",
        ray_address=f"http://{cluster.webui_url}",
        artifact_root=None,
    )
    # A cluster the API did not start: its nodes' PATH need not have this venv's python, so the
    # jobs name it, as a deployment sets DETRFORGE_JOB_PYTHON to its image's interpreter.
    settings = settings.model_copy(update={"job_python": sys.executable})
    yield from harness(settings, alive=_nodes_alive(cluster))


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
    bench_api: ApiHarness, two_nodes: Any, nano_checkpoint: Path, shapes_dataset: Path
) -> None:
    _, worker = two_nodes
    _create_target(bench_api, "cpu-x86", {"hw_bench_x86": 1})
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
    assert record["node_id"] == worker.node_id, "the benchmark ran on a node without the resource"
    assert record["job_id"] == job["id"]
    assert record["runs"] == 5 and record["threads"] == 1
    assert record["target_resources"] == {"hw_bench_x86": 1.0}
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
    _create_target(bench_api, "cpu-x86-ort", {"hw_bench_x86": 1})
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
