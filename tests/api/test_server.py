"""``detrforge serve``'s parts that need no cluster: readiness, the home lock, the head's temp
dir, stopping a process tree, a driver whose cluster is gone, refused submits, CLI exit codes."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from typer.testing import CliRunner

from detrforge import cli
from detrforge.api.readiness import redact_url
from detrforge.api.server import ServeLock, holder_pid, succeed_previous_replica
from detrforge.cli import jobs as cli_jobs
from detrforge.cli.client import ApiClient
from detrforge.control.leases import PromotionLeases
from detrforge.detector.data import DatasetInfo
from detrforge.platform.cluster import MAX_TEMP_DIR_CHARS, check_temp_dir, stop_process_tree
from detrforge.platform.errors import ClusterError, ConflictError
from detrforge.platform.settings import Settings
from detrforge.registry.entities import Role
from fixtures_cluster import TINY_SPEC, ApiHarness
from fixtures_db import RegistryStores


# -- readiness ----------------------------------------------------------------------------------
def test_ready_is_503_naming_ray_while_health_stays_ok(offline_api: ApiHarness) -> None:
    assert offline_api.client.get("/health").status_code == 200
    response = offline_api.client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    parts = body["components"]
    assert set(parts) == {"database", "ray", "mlflow", "artifacts"}
    assert parts["ray"]["ok"] is False
    assert "Ray Jobs API" in parts["ray"]["message"]
    assert offline_api.settings.resolved_ray_address() in parts["ray"]["message"]
    for name in ("database", "mlflow", "artifacts"):
        assert parts[name]["ok"] is True, parts[name]
    # Readiness is a probe for load balancers: no key needed.
    assert "Authorization" not in response.request.headers


def test_ready_reports_a_missing_artifact_root(offline_api: ApiHarness) -> None:
    root = Path(offline_api.settings.resolved_artifact_root().removeprefix("file://"))
    root.rename(root.with_name("moved"))
    try:
        parts = offline_api.client.get("/ready").json()["components"]
    finally:
        root.with_name("moved").rename(root)
    assert parts["artifacts"] == {**parts["artifacts"], "ok": False}
    assert str(root) in parts["artifacts"]["message"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://user:secret@db:5432/x", "postgresql://db:5432/x"),
        ("http://tok@mlflow:5000", "http://mlflow:5000"),
        ("sqlite:////tmp/a.db", "sqlite:////tmp/a.db"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
    ],
)
def test_readiness_messages_carry_no_credentials(url: str, expected: str) -> None:
    assert redact_url(url) == expected


# -- one serve per home -------------------------------------------------------------------------
def test_a_second_serve_on_the_same_home_is_refused(tmp_path: Path) -> None:
    first = ServeLock(tmp_path / "serve.lock")
    first.acquire()
    assert holder_pid(tmp_path) == psutil.Process().pid
    with pytest.raises(ConflictError, match=rf"pid {psutil.Process().pid}\) is running"):
        ServeLock(tmp_path / "serve.lock").acquire()
    first.release()
    assert holder_pid(tmp_path) is None
    again = ServeLock(tmp_path / "serve.lock")
    again.acquire()  # released locks are free again
    again.release()


def test_a_serve_restarted_on_its_home_resumes_its_promotions_at_once(
    tmp_path: Path, registry_stores: RegistryStores
) -> None:
    checkpoint = tmp_path / "v1.pth"
    checkpoint.write_bytes(b"weights")
    registry_stores.models.create_model("m", actor="test")
    registry_stores.models.register_version(
        "m",
        checkpoint_uri=str(checkpoint),
        checkpoint_sha256="0" * 64,
        checkpoint_bytes=7,
        model_size="nano",
        resolution=128,
        actor="test",
    )
    promotion = registry_stores.promotions.request("m", 1, "production", actor="test")
    crashed, restarted = (
        PromotionLeases(registry_stores.leases, ttl_s=30, renew_interval_s=10) for _ in range(2)
    )
    succeed_previous_replica(crashed, tmp_path)  # the first serve on this home
    assert crashed.claim(promotion.id)
    assert not restarted.claim(promotion.id)  # a live lease of 30 s

    succeed_previous_replica(restarted, tmp_path)  # it holds the home's lock: the first is gone

    assert restarted.held() == {promotion.id} and restarted.claim(promotion.id)
    assert (tmp_path / "replica.id").read_text() == restarted.owner


# -- the head's temp dir ------------------------------------------------------------------------
def test_head_temp_dir_follows_ray_tmpdir_then_tmpdir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "sys"))
    (tmp_path / "sys").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    settings = Settings(home=tmp_path / "home", ray_gcs_port=6400)
    assert settings.resolved_ray_temp_dir() == tmp_path / "sys" / "detrforge-ray-6400"
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))
    expected = tmp_path / "ray" / "detrforge-ray-6400"
    assert Settings(ray_gcs_port=6400).resolved_ray_temp_dir() == expected
    monkeypatch.setenv("DETRFORGE_RAY_TEMP_DIR", "/x/y")
    assert Settings().resolved_ray_temp_dir() == Path("/x/y")


def test_a_temp_dir_too_long_for_ray_sockets_is_refused_with_the_fix() -> None:
    check_temp_dir(Path("/tmp/detrforge-ray-6390"))
    with pytest.raises(ClusterError, match="DETRFORGE_RAY_TEMP_DIR") as caught:
        check_temp_dir(Path("/" + "d" * MAX_TEMP_DIR_CHARS))
    assert "107-byte" in caught.value.message


# -- nothing outlives its head ------------------------------------------------------------------
_TREE = """
import os, signal, subprocess, sys, time
# A grandchild in a session of its own that ignores SIGTERM: what Ray's job drivers look like.
IGNORER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
subprocess.Popen([sys.executable, "-c", IGNORER], start_new_session=True)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
time.sleep(600)
"""


def test_stopping_a_tree_reaches_other_sessions_and_sigterm_ignorers() -> None:
    root = subprocess.Popen([sys.executable, "-c", _TREE], start_new_session=True)
    deadline = time.monotonic() + 20
    while len(psutil.Process(root.pid).children(recursive=True)) < 2:
        assert time.monotonic() < deadline, "the tree did not start"
        time.sleep(0.1)
    time.sleep(0.5)  # let the grandchild install its SIGTERM handler
    tree = [p.pid for p in psutil.Process(root.pid).children(recursive=True)]
    killed = stop_process_tree(root.pid, timeout_s=3)
    root.wait(timeout=5)
    assert len(killed) == 1  # only the SIGTERM-ignoring one needed SIGKILL
    assert not [pid for pid in tree if psutil.pid_exists(pid) and _running(pid)]


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_driver_exits_once_its_cluster_is_gone() -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    code = (
        "import time; from detrforge.jobs.driver import exit_when_cluster_gone; "
        f"exit_when_cluster_gone('127.0.0.1:{port}', every_s=0.2, misses=3); time.sleep(120)"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    time.sleep(2)
    assert driver.poll() is None  # the cluster answers: the driver keeps going
    listener.close()
    try:
        assert driver.wait(timeout=30) == 75
    finally:
        driver.kill()
    assert driver.stderr is not None
    assert f"the Ray cluster at 127.0.0.1:{port} is gone" in driver.stderr.read()


# -- a submit the cluster refuses ---------------------------------------------------------------
def test_a_refused_submit_is_503_and_its_row_says_it_never_started(
    offline_api: ApiHarness, synth_ds: DatasetInfo
) -> None:
    response = offline_api.submit({**TINY_SPEC, "dataset": synth_ds.root})
    assert response.status_code == 503
    assert response.json()["code"] == "CLUSTER_ERROR"
    jobs = offline_api.client.get("/api/v1/finetune-jobs", headers=offline_api.headers()).json()[
        "items"
    ]
    assert len(jobs) == 1
    assert jobs[0]["state"] == "FAILED"
    assert jobs[0]["error"].startswith("never started: the Ray cluster was unreachable")
    assert jobs[0]["mlflow_run_id"] is None


def test_a_job_without_a_model_is_refused_wherever_a_job_id_names_weights(
    offline_api: ApiHarness, synth_ds: DatasetInfo
) -> None:
    """Registering, evaluating and benchmarking by ``job_id`` take only a SUCCEEDED fine-tune."""
    assert offline_api.submit({**TINY_SPEC, "dataset": synth_ds.root}).status_code == 503
    headers = offline_api.headers()
    [failed] = offline_api.client.get("/api/v1/finetune-jobs", headers=headers).json()["items"]
    refusal = f"job {failed['id']} is a FAILED finetune job without a model; give a SUCCEEDED"
    assert offline_api.client.post("/api/v1/models", json={"name": "m"}, headers=headers).is_success
    attempts = {
        "/api/v1/models/m/versions": ({"job_id": failed["id"]}, " fine-tune job"),
        "/api/v1/evaluations": (
            {"job_id": failed["id"], "dataset": synth_ds.root},
            " fine-tune job or a checkpoint URI",
        ),
        "/api/v1/benchmarks": (
            {"job_id": failed["id"], "target": "offline-cpu"},
            " fine-tune job or a checkpoint URI",
        ),
    }
    target = {"name": "offline-cpu", "resources": {"CPU": 1}}
    assert offline_api.client.post("/api/v1/hardware-targets", json=target, headers=headers)
    for path, (body, ending) in attempts.items():
        response = offline_api.client.post(path, json=body, headers=headers)
        assert response.status_code == 422, (path, response.text)
        error = response.json()
        assert (error["field"], error["message"]) == ("job_id", refusal + ending), path


def test_a_paired_benchmark_checks_its_baseline_like_its_candidate(
    offline_api: ApiHarness, nano_checkpoint: Path
) -> None:
    headers = offline_api.headers()
    target = {"name": "offline-cpu", "resources": {"CPU": 1}}
    assert offline_api.client.post("/api/v1/hardware-targets", json=target, headers=headers)
    body = {
        "checkpoint": str(nano_checkpoint),
        "resolution": 128,
        "target": "offline-cpu",
        "max_ratio": 1.2,
    }
    cases = [
        ({}, "max_ratio", "max_ratio: a ratio needs a baseline; set baseline.checkpoint"),
        (
            {"baseline": {"checkpoint": str(nano_checkpoint), "resolution": 100}},
            "baseline.resolution",
            "use 96 or 128",
        ),
        (
            {"baseline": {"checkpoint": str(nano_checkpoint.with_name("missing.pth"))}},
            "baseline.checkpoint",
            "missing.pth",
        ),
    ]
    for extra, field, fragment in cases:
        response = offline_api.client.post(
            "/api/v1/benchmarks", json={**body, **extra}, headers=headers
        )
        assert response.status_code == 422, response.text
        assert response.json()["field"] == field
        assert fragment in response.json()["message"]


# -- the CLI: an id on stdout, a non-zero exit unless SUCCEEDED ---------------------------------
@pytest.fixture
def cli_on(offline_api: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> ApiHarness:
    """The CLI's HTTP client wired to the in-process API (no sockets)."""

    def client(settings: Settings) -> ApiClient:
        api = ApiClient.__new__(ApiClient)
        offline_api.client.headers.update(offline_api.headers(Role.operator))
        api.http = offline_api.client
        return api

    monkeypatch.setattr(cli_jobs, "ApiClient", client)
    return offline_api


def _run(*args: str) -> Any:
    return CliRunner().invoke(cli.app, list(args))


def test_cli_submit_refused_prints_no_job_id_and_fails(
    cli_on: ApiHarness, synth_ds: DatasetInfo
) -> None:
    result = _run(
        "finetune", "submit", "--dataset", synth_ds.root, "--model-size", "nano",
        "--resolution", "128", "--num-workers", "1", "--wait",
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "HTTP 503 CLUSTER_ERROR" in result.stderr


def test_cli_wait_fails_unless_the_job_succeeded(cli_on: ApiHarness, synth_ds: DatasetInfo) -> None:
    cli_on.submit({**TINY_SPEC, "dataset": synth_ds.root})
    jobs = cli_on.client.get("/api/v1/finetune-jobs", headers=cli_on.headers()).json()
    job_id = jobs["items"][0]["id"]
    result = _run("finetune", "wait", job_id)
    assert result.exit_code == 1
    assert f"job {job_id} ended FAILED" in result.stderr


def test_cli_set_options_parse_json_else_keep_the_string() -> None:
    from detrforge.cli.client import apply_sets

    spec: dict[str, Any] = {"epochs": 1}
    apply_sets(spec, ["epochs=3", "use_ema=false", "lr=1e-4", "note=plain text", "x="])
    assert spec == {"epochs": 3, "use_ema": False, "lr": 1e-4, "note": "plain text", "x": ""}


def test_cli_target_gates_parse_ship_and_refuse_what_they_cannot_read() -> None:
    import click

    from detrforge.cli.registry import _target_gate

    assert _target_gate("cpu-x86:ratio=1.2:sla=50:ship=onnx-int8") == {
        "target": "cpu-x86",
        "max_p95_ratio": 1.2,
        "p95_sla_ms": 50.0,
        "variant": "onnx-int8",
    }
    assert _target_gate("cpu-1t:sla=80") == {"target": "cpu-1t", "p95_sla_ms": 80.0}
    for bad in ("cpu:speed=2", "cpu:ship=", "cpu:ratio=fast"):
        with pytest.raises((SystemExit, click.exceptions.Exit)):
            _target_gate(bad)


def test_cli_optimize_table_marks_the_fastest_within_tolerance() -> None:
    from detrforge.cli.registry import variant_table

    def row(name: str, p95: float, ap: float, best: bool) -> dict[str, Any]:
        return {
            "name": name,
            "size_bytes": 3 * 2**20,
            "build_seconds": 12.5,
            "metrics": {
                "e2e_ms": {"p50": p95 - 2, "p95": p95, "p99": p95 + 1},
                "model_ms": {"p50": p95 - 5, "p95": p95 - 3, "p99": p95 - 2},
                "eager_e2e_ms": {"p50": 70.0, "p95": 80.0, "p99": 90.0},
                "speedup_e2e_p95": round(80.0 / p95, 4),
                "speedup_model_p95": {"speedup": 2.1, "low": 1.9, "high": 2.3},
                "ap": ap,
                "ap_change": ap - 0.5,
                "eager_ap": 0.5,
                "best": best,
            },
        }

    lines = variant_table([row("onnx-opt", 50.0, 0.5, False), row("onnx-int8", 40.0, 0.498, True)])
    assert lines[1].split() == ["eager", "80.0", "1.00x", "0.5000"]
    assert lines[2].startswith("  onnx-opt") and lines[3].startswith("* onnx-int8")
    assert lines[3].split()[2:6] == ["38.0", "40.0", "41.0", "37.0"]
    assert "2.00x, 2.10x [1.90, 2.30]" in lines[3] and "-0.0020" in lines[3]
    assert variant_table([]) == ["no variant was built"]
