"""Gated promotion on the real cluster: evaluate + benchmark jobs on Ray, real COCO AP from a
real fine-tune, real latency on the CPU target, and an API process killed mid-promotion.

One fine-tune (Nano, 128 px, an easy synthetic set) gives the good model; the bad one is the same
weights with the class head scrambled, so only AP differs between them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from detrforge.platform.cluster import LocalRayHead
from detrforge.platform.db import make_engine, make_session_factory
from detrforge.registry.audit import AuditLog
from detrforge.registry.entities import PromotionState, Role, Stage
from detrforge.registry.models import ModelStore
from detrforge.registry.promotions import PromotionStore
from fixtures_cluster import (
    DATA_ROOTS,
    ApiHarness,
    harness,
    make_settings,
    start_on_reserved_ports,
    wait_until,
)
from fixtures_db import POSTGRES_URL_VARIABLE, _fresh_postgres_database

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CPU_TARGET = {"name": "cpu-1t", "resources": {"CPU": 1}, "backend": "torch", "num_threads": 1}


def _gate(promotion: dict[str, Any], gate: str) -> dict[str, Any]:
    [result] = [g for g in promotion["gate_results"] if g["gate"] == gate]
    return dict(result)


def _production_alias(api: ApiHarness, model: str) -> str:
    client = MlflowClient(tracking_uri=api.settings.resolved_tracking_uri())
    return str(client.get_model_version_by_alias(model, "production").version)


def _scrambled_copy(checkpoint: Path, out: Path) -> Path:
    """The same weights with the class head replaced by seeded noise: boxes kept, scores random."""
    import torch

    data = torch.load(checkpoint, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(0)
    for key, tensor in data["model"].items():
        if key.startswith("class_embed."):
            data["model"][key] = torch.randn(tensor.shape, generator=generator) * 5
    torch.save(data, out)
    return out


@pytest.fixture
def pg_or_sqlite_api(tmp_path: Path, ray_head: LocalRayHead) -> Iterator[ApiHarness]:
    """The cluster API on PostgreSQL when the suite has one (CI does), else on SQLite: the
    latency test covers SQLite, so CI runs the gated flows on both."""
    url_variable = os.environ.get(POSTGRES_URL_VARIABLE)
    databases = (
        _fresh_postgres_database(url_variable)
        if url_variable
        else iter([f"sqlite:///{tmp_path / 'registry.db'}"])
    )
    database_url = next(databases)
    settings = make_settings(
        tmp_path / "home",
        database_url=database_url,
        ray_address=ray_head.dashboard_url,
        artifact_root=None,
    )
    yield from harness(settings)
    shutil.rmtree(tmp_path / "home" / "artifacts", ignore_errors=True)
    next(databases, None)  # drops the PostgreSQL database


def test_ap_gate_refuses_a_worse_candidate_and_passes_the_reverse(
    pg_or_sqlite_api: ApiHarness,
    nano_checkpoint: Path,
    pseudo_labelled_dataset: Path,
    tmp_path: Path,
) -> None:
    """Real evaluation jobs on Ray, real COCO AP: the eval set's labels are the good model's own
    detections (AP ~0.86), and its copy with a scrambled class head scores far lower. No
    training: the registration of a fine-tune job's model is covered in the fine-tune tests."""
    api = pg_or_sqlite_api
    good_ckpt = nano_checkpoint
    bad_ckpt = _scrambled_copy(good_ckpt, tmp_path / "scrambled.pth")
    policy = {
        "eval": {"dataset": str(pseudo_labelled_dataset), "split": "valid"},
        "max_ap_drop": 0.02,
    }

    # Good in production, then the scrambled candidate: refused by the AP gate.
    api.call("POST", "/models", {"name": "good-first"}, Role.operator)
    api.call("PUT", "/models/good-first/policy", policy)
    good, bad = [
        api.call(
            "POST",
            "/models/good-first/versions",
            {"checkpoint": str(ckpt), "model_size": "nano", "resolution": 128},
            Role.operator,
        )
        for ckpt in (good_ckpt, bad_ckpt)
    ]
    first = api.promote("good-first", good["version"])
    assert first["state"] == "applied", first["message"]
    good_ap = _gate(first, "max_ap_drop")["candidate"]
    assert good_ap > 0.5, f"the good model scored AP {good_ap} on its own detections"

    refused = api.promote("good-first", bad["version"])
    assert refused["state"] == "failed", refused["message"]
    gate = _gate(refused, "max_ap_drop")
    assert gate["passed"] is False
    assert gate["baseline"] == pytest.approx(good_ap)
    assert gate["candidate"] < good_ap - 0.1, gate
    assert f"below production v{good['version']}" in gate["detail"]
    assert gate["evidence"]["baseline"]["reused"] is True  # production's AP was not re-measured
    assert refused["message"].startswith("refused: max_ap_drop")
    versions = api.call("GET", "/models/good-first/versions")["items"]
    assert {v["version"]: v["stage"] for v in versions} == {
        good["version"]: "production",
        bad["version"]: "none",
    }
    assert _production_alias(api, "good-first") == good["mlflow_version"]

    # The reverse order passes, and reuses both evaluations (same sha256, same pinned eval set).
    api.call("POST", "/models", {"name": "bad-first"}, Role.operator)
    api.call("PUT", "/models/bad-first/policy", policy)
    for ckpt in (bad_ckpt, good_ckpt):
        api.call(
            "POST",
            "/models/bad-first/versions",
            {"checkpoint": str(ckpt), "model_size": "nano", "resolution": 128},
            Role.operator,
        )
    assert api.promote("bad-first", 1)["state"] == "applied"
    better = api.promote("bad-first", 2)
    assert better["state"] == "applied", better["message"]
    gate = _gate(better, "max_ap_drop")
    assert gate["passed"] and gate["candidate"] == pytest.approx(good_ap)
    assert all(item.get("reused") for item in better["evidence"])
    assert api.call("GET", "/models/bad-first")["production_version"] == 2


def test_paired_latency_gate_on_the_cpu_target(
    cluster_api: ApiHarness, nano_checkpoint: Path, pseudo_labelled_dataset: Path
) -> None:
    """The same bytes as production pass a paired p95 gate; the same weights at 192 px (2.25x
    the pixels of 128) are refused against 1.2. Candidate and production are timed in one job,
    after the promotion's evaluations have ended, with 292 samples per arm (what p95 needs)."""
    api = cluster_api
    api.call("POST", "/hardware-targets", CPU_TARGET)
    api.call("POST", "/models", {"name": "lat"}, Role.operator)
    for resolution in (128, 128, 192):
        api.call(
            "POST",
            "/models/lat/versions",
            {"checkpoint": str(nano_checkpoint), "model_size": "nano", "resolution": resolution},
            Role.operator,
        )
    assert api.promote("lat", 1)["state"] == "applied"  # no policy yet
    policy: dict[str, Any] = {
        "eval": {"dataset": str(pseudo_labelled_dataset), "split": "valid"},
        "max_ap_drop": 0.5,
        "targets": [{"target": "cpu-1t", "max_p95_ratio": 1.5, "p95_sla_ms": 60000}],
        "benchmark_warmup": 3,
    }
    api.call("PUT", "/models/lat/policy", policy)

    same = api.promote("lat", 2)
    assert same["state"] == "applied", same["message"]
    gate = _gate(same, "max_p95_ratio")
    paired = gate["evidence"]["paired"]
    assert gate["evidence"]["verdict"] == "pass" and gate["passed"] is True
    assert paired["arms"]["candidate"]["n"] == paired["arms"]["baseline"]["n"] >= 292
    p95 = paired["ratio"]["p95"]
    assert p95["low"] <= p95["ratio"] <= p95["high"] <= 1.5
    assert (gate["candidate"], gate["baseline"]) == (
        paired["arms"]["candidate"]["p95_ms"],
        paired["arms"]["baseline"]["p95_ms"],
    )
    assert f"is within 1.50: p95 {gate['candidate']:.1f} ms vs production v1" in gate["detail"]
    assert paired["node_load"]["cpu_count"] >= 1 and "loadavg_1m_start" in paired["node_load"]
    assert _gate(same, "p95_sla")["candidate"] == gate["candidate"]

    # The benchmark started only after every evaluation of the promotion had ended.
    jobs = {item["kind"]: [] for item in same["evidence"]}
    for item in same["evidence"]:
        if not item.get("reused"):
            jobs[item["kind"]].append(api.call("GET", f"/jobs/{item['job_id']}"))
    [benchmark] = jobs["benchmark"]
    assert jobs["evaluate"], same["evidence"]
    at = datetime.fromisoformat
    for evaluation in jobs["evaluate"]:
        assert at(evaluation["finished_at"]) <= at(benchmark["created_at"])
    assert at(benchmark["created_at"]) <= at(benchmark["started_at"])
    record = api.call("GET", "/benchmark-records?model_name=lat")["items"][0]
    assert record["job_id"] == benchmark["id"] and record["paired"]["verdict"] == "pass"
    assert (
        len(record["paired"]["samples"]["baseline"]["model_ms"]) == paired["arms"]["baseline"]["n"]
    )
    measured_from = datetime.fromtimestamp(record["node_load"]["started_at"], UTC)
    assert all(datetime.fromisoformat(e["finished_at"]) <= measured_from for e in jobs["evaluate"])

    # Latency only: the AP gate's evaluations were shown to come first above.
    api.call("PUT", "/models/lat/policy", {"targets": [
        {"target": "cpu-1t", "max_p95_ratio": 1.2}], "benchmark_warmup": 3})  # fmt: skip
    slower = api.promote("lat", 3)
    assert slower["state"] == "failed", slower["message"]
    gate = _gate(slower, "max_p95_ratio")
    assert gate["passed"] is False and gate["threshold"] == 1.2
    assert gate["evidence"]["verdict"] in ("fail", "inconclusive"), gate["detail"]
    p95 = gate["evidence"]["paired"]["ratio"]["p95"]
    assert p95["high"] > 1.2 and gate["evidence"]["paired"]["ratio"]["p50"]["low"] > 1.2
    assert gate["candidate"] > gate["baseline"]
    assert slower["message"].startswith("refused: max_p95_ratio: ")
    assert api.call("GET", "/models/lat")["production_version"] == 2


def _wait_job(api: ApiHarness, job_id: str, timeout_s: float = 600) -> dict[str, Any]:
    job = wait_until(
        lambda: api.call("GET", f"/jobs/{job_id}"),
        until=lambda j: j["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"),
        what=f"job {job_id} to end",
        timeout_s=timeout_s,
        every_s=2.0,
    )
    return dict(job)


def test_a_promotion_gates_on_the_int8_artifact_that_ships(
    cluster_api: ApiHarness, nano_checkpoint: Path, pseudo_labelled_dataset: Path
) -> None:
    """The policy ships onnx-int8 on cpu-1t. Before it is built the promotion fails saying how
    to build it; `optimize` builds it on the target (timed against eager, scored on the pinned
    set, stored by sha256); then the AP and latency gates on cpu-1t measure that artifact, and
    the per-target production alias answers with it."""
    api = cluster_api
    api.call("POST", "/hardware-targets", CPU_TARGET)
    api.call("POST", "/models", {"name": "int8"}, Role.operator)
    version = api.call(
        "POST",
        "/models/int8/versions",
        {"checkpoint": str(nano_checkpoint), "model_size": "nano", "resolution": 128},
        Role.operator,
    )
    policy = {
        "eval": {"dataset": str(pseudo_labelled_dataset), "split": "valid"},
        "ap_floor": 0.0,
        "targets": [{"target": "cpu-1t", "p95_sla_ms": 60000, "variant": "onnx-int8"}],
        "benchmark_runs": 20,
        "benchmark_warmup": 2,
    }
    api.call("PUT", "/models/int8/policy", policy)

    unbuilt = api.promote("int8", 1)
    assert unbuilt["state"] == "failed"
    assert "v1 has no onnx-int8 variant, which the policy ships on cpu-1t" in unbuilt["message"]
    assert "detrforge optimize int8 1 --target cpu-1t" in unbuilt["message"]

    body = {"target": "cpu-1t", "variants": ["onnx-int8"], "runs": 10, "calibration_images": 4}
    job = api.call("POST", "/models/int8/versions/1/optimize", body, Role.operator)
    job = _wait_job(api, job["id"])
    assert job["state"] == "SUCCEEDED", job.get("error")
    [variant] = api.call("GET", "/models/int8/versions/1/variants")["items"]
    metrics = variant["metrics"]
    assert (variant["name"], variant["precision"], metrics["job_id"]) == (
        "onnx-int8",
        "int8",
        job["id"],
    )
    assert variant["artifact_uri"].endswith(f"/variants/{variant['sha256']}")
    assert variant["recipe"]["checkpoint_sha256"] == version["checkpoint_sha256"]
    assert variant["recipe"]["calibration"]["num_images"] == 4
    assert metrics["eager_ap"] > 0.5 and 0.0 <= metrics["ap"] <= 1.0
    assert metrics["ap_change"] == pytest.approx(metrics["ap"] - metrics["eager_ap"])
    speed = metrics["speedup_model_p95"]
    assert 0 < speed["low"] <= speed["speedup"] <= speed["high"]
    assert metrics["e2e_ms"]["p50"] <= metrics["e2e_ms"]["p95"] <= metrics["e2e_ms"]["p99"]

    applied = api.promote("int8", 1)
    assert applied["state"] == "applied", applied["message"]
    shipped = {"variant": "onnx-int8", "sha256": variant["sha256"]}
    by_gate = {(g["gate"], g["target"]): g for g in applied["gate_results"]}
    floor = by_gate[("ap_floor", "cpu-1t")]
    # The same bytes on the same pinned set: the gate's AP is the one optimize measured.
    assert floor["candidate"] == pytest.approx(metrics["ap"], abs=1e-9)
    assert floor["evidence"]["candidate"]["artifact"] == shipped
    assert by_gate[("ap_floor", None)]["candidate"] == pytest.approx(metrics["eager_ap"], abs=1e-9)
    assert "artifact" not in by_gate[("ap_floor", None)]["evidence"]["candidate"]
    sla = by_gate[("p95_sla", "cpu-1t")]
    assert sla["evidence"]["candidate"]["artifact"] == shipped
    record = api.call("GET", "/benchmark-records?model_name=int8")["items"][0]
    assert (record["job_id"], record["backend"]) == (
        sla["evidence"]["candidate"]["job_id"],
        "onnx-int8",
    )
    assert record["p95_ms"] == pytest.approx(sla["candidate"])

    alias = api.call("GET", "/models/int8/aliases/production?target=cpu-1t")
    assert (alias["version"], alias["variant"], alias["model_file"]) == (
        1,
        "onnx-int8",
        "model.onnx",
    )
    assert (alias["artifact_uri"], alias["artifact_sha256"]) == (
        variant["artifact_uri"],
        variant["sha256"],
    )
    plain = api.call("GET", "/models/int8/aliases/production")
    assert plain["artifact_sha256"] == version["checkpoint_sha256"] and plain["variant"] is None


# -- crash safety -------------------------------------------------------------------------------


class _Server:
    """``detrforge serve`` as its own process, so it can really die."""

    def __init__(self, home: Path, ray_address: str, database_url: str) -> None:
        self.home, self.database_url = home, database_url
        self.port = 0  # set by each start
        self.env = {
            **os.environ,
            "DETRFORGE_HOME": str(home),
            "DETRFORGE_DATABASE_URL": database_url,
            "DETRFORGE_RAY_ADDRESS": ray_address,
            "DETRFORGE_RECONCILE_INTERVAL_S": "1",
            "DETRFORGE_DATA_ROOTS": os.pathsep.join(str(root) for root in DATA_ROOTS),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, failpoints: str = "") -> _Server:
        """Start serve on a port reserved until it binds it; wait until it answers."""

        def start_on(ports: list[int]) -> _Server:
            self.port = ports[0]
            env = {**self.env, "DETRFORGE_FAILPOINTS": failpoints, "DETRFORGE_PORT": str(self.port)}
            cli = str(Path(sys.executable).with_name("detrforge"))
            with (self.home / "serve.log").open("ab") as log:
                self.process = subprocess.Popen([cli, "serve"], env=env, stdout=log, stderr=log)
            wait_until(self._healthy, timeout_s=120, what="serve to answer /health")
            return self

        return start_on_reserved_ports(1, start_on)

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError((self.home / "serve.log").read_text()[-3000:])
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def call(self, method: str, path: str, body: Any = None) -> Any:
        key = (self.home / "admin.key").read_text().strip()
        response = httpx.request(
            method,
            f"http://127.0.0.1:{self.port}/api/v1{path}",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert response.status_code < 300, response.text
        return response.json()

    def settled(self, promotion_id: str) -> dict[str, Any] | None:
        """The promotion once it is applied or failed, else None."""
        promotion = dict(self.call("GET", f"/promotions/{promotion_id}"))
        return promotion if promotion["state"] in ("applied", "failed") else None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path, ray_head: LocalRayHead) -> Iterator[_Server]:
    """``detrforge serve`` on PostgreSQL when the suite has one (CI does), else SQLite: the
    recovery is the same code on both, and SQLite's transactions are covered by the stores'
    own tests on both backends."""
    url_variable = os.environ.get(POSTGRES_URL_VARIABLE)
    databases = (
        _fresh_postgres_database(url_variable)
        if url_variable
        else iter([f"sqlite:///{tmp_path / 'registry.db'}"])
    )
    home = tmp_path / "home"
    home.mkdir()
    server = _Server(home, ray_head.dashboard_url, next(databases))
    yield server
    server.stop()
    shutil.rmtree(home / "artifacts", ignore_errors=True)
    next(databases, None)  # drops the PostgreSQL database


def test_api_killed_between_gates_and_commit_recovers(
    server: _Server, nano_checkpoint: Path
) -> None:
    server.start()
    server.call("POST", "/hardware-targets", CPU_TARGET)
    server.call("POST", "/models", {"name": "crash"})
    for _ in range(2):
        server.call(
            "POST",
            "/models/crash/versions",
            {"checkpoint": str(nano_checkpoint), "model_size": "nano", "resolution": 128},
        )
    # v1 reaches production without gates (no policy yet); v2 must pass a benchmark gate.
    first = server.call("POST", "/models/crash/versions/1/promotions", {"to": "production"})
    first = wait_until(lambda: server.settled(first["id"]), timeout_s=60, every_s=0.5)
    assert first["state"] == "applied", first["message"]
    server.call(
        "PUT",
        "/models/crash/policy",
        {"targets": [{"target": "cpu-1t", "p95_sla_ms": 60000}], "benchmark_runs": 3},
    )
    server.stop()

    server.start(failpoints="promotion.before_commit")
    second = server.call("POST", "/models/crash/versions/2/promotions", {"to": "production"})
    assert server.process is not None
    assert server.process.wait(timeout=300) == 86  # died at the failpoint, mid-transaction

    engine = make_engine(server.database_url)
    sessions = make_session_factory(engine)
    registry, promotions = ModelStore(sessions), PromotionStore(sessions)
    interrupted = promotions.get(second["id"])
    assert interrupted.state == PromotionState.running and interrupted.gate_results == []
    assert registry.get_version("crash", 1).stage == Stage.production
    assert registry.get_version("crash", 2).stage == Stage.none
    assert all(item["state"] == "done" for item in interrupted.evidence)

    server.start()  # the restarted API resumes the promotion from its recorded evidence
    final = wait_until(lambda: server.settled(second["id"]), timeout_s=120, every_s=1)
    assert final["state"] == "applied", final["message"]
    assert [g["gate"] for g in final["gate_results"]] == ["integrity", "p95_sla"]
    assert registry.get_version("crash", 2).stage == Stage.production
    assert registry.get_version("crash", 1).stage == Stage.archived
    events, _ = AuditLog(sessions).list(model_name="crash", request_id=second["request_id"])
    assert [e.action for e in events] == ["promotion.request", "promotion.apply"]
    engine.dispose()
