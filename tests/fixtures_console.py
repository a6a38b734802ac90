"""The seeded registry behind the console's browser tests (tests/api/test_console.py): the API
on a real uvicorn server on a loopback port, seeded through the real stores and services and
over REST as a user would: a model with a gate policy, versions, promotions through the real
state machine (v1 and v2 to production, v3 refused by the AP gate), benchmark history, jobs and
a sweep.

No model is trained: the promotions' evaluate and benchmark evidence comes from
``FiguresRunner``, which records real job rows and real benchmark records with chosen figures
(the machinery of tests/control/test_promotion.py); the gates, their verdicts and sentences are
the real ones.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from detrforge.api.deps import Services
from detrforge.api.main import build_services, create_app
from detrforge.control.promotion import EvidenceNeed, EvidenceResult, PromotionService
from detrforge.detector.data import DatasetInfo
from detrforge.detector.specs import parse_spec
from detrforge.detector.sweep_specs import SweepSpec
from detrforge.platform.tags import Tag
from detrforge.registry.benchmarks import BenchmarkStore
from detrforge.registry.entities import JobState, ModelVersion, Role
from detrforge.registry.gates import GatePolicy
from detrforge.registry.jobs import JobStore
from fixtures_cluster import free_port, make_settings, wait_until
from fixtures_gates import paired_summary

MODEL = "shelf-detector"
PROBE = "markup-probe"
PROBE_DESCRIPTION = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'
TARGET = "cpu-local"
MLFLOW_UI = "http://mlflow.example:5000"
# What each version measures: AP on the pinned set, p95 on TARGET (v3 is the worse candidate).
AP = {1: 0.0008, 2: 0.2267, 3: 0.0010, 4: 0.2301}
P95 = {1: 371.6, 2: 265.9, 3: 172.4, 4: 250.2}
PINS = {
    "detrforge": "0.1.0",
    "rfdetr": "1.11.2",
    "torch": "2.14.1",
    "torchvision": "0.29.1",
    "onnxruntime": "1.32.0",
    "python": "3.11.7",
    "os": "Linux-6.1",
    "cpu_model": "AMD EPYC",
}


# -- evidence with chosen figures, recorded as real jobs and benchmark records ---------------------
@dataclass
class FiguresRunner:
    """Answers a promotion's evidence needs with ``AP`` and ``P95``: each need becomes a job row
    (evaluate or benchmark) that succeeds when read, and each benchmark a history record.

    While ``release`` is clear, submitted evidence stays submitted (the promotion runs on)."""

    job_store: JobStore
    benchmarks: BenchmarkStore
    release: threading.Event = field(default_factory=threading.Event)

    def start(
        self,
        need: EvidenceNeed,
        version: ModelVersion,
        *,
        policy: GatePolicy,
        promotion_id: str,
        job_id: str,
        baseline: ModelVersion | None,
    ) -> EvidenceResult:
        paired = baseline is not None and need.kind == "benchmark"
        if paired and need.target is not None:
            paired = policy.target(need.target).max_p95_ratio is not None
        spec = {
            "checkpoint": version.checkpoint_uri,
            "checkpoint_sha256": version.checkpoint_sha256,
            "model_name": version.model_name,
            "model_version": version.version,
            "target": need.target,
            "baseline_version": baseline.version if paired and baseline else None,
        }
        job = self.job_store.create(
            kind=need.kind,
            spec=spec,
            created_by=f"promotion {promotion_id}",
            dataset_fingerprint=None,
            job_id=job_id,
        )
        self.job_store.update(job.id, state=JobState.RUNNING, started_at=datetime.now(UTC))
        return EvidenceResult(need=need, version=version.version, state="submitted", job_id=job.id)

    def read(self, result: EvidenceResult, *, policy: GatePolicy) -> EvidenceResult:
        if not self.release.is_set():
            return result
        assert result.job_id is not None
        run_id = uuid.uuid4().hex
        job = self.job_store.get(result.job_id)
        if result.need.kind == "evaluate":
            figures = {"bbox/AP": AP[result.version]}
            done = replace(result, state="done", ap=AP[result.version], mlflow_run_id=run_id)
        else:
            base = job.spec.get("baseline_version")
            pair = paired_summary(P95[result.version], P95[base]) if base else None
            record = self.benchmarks.add(
                _record(
                    job.id,
                    job.spec["checkpoint_sha256"],
                    P95[result.version],
                    version=result.version,
                    run_id=run_id,
                    paired=pair,
                )
            )
            figures = {"latency_ms/p95": P95[result.version]}
            done = replace(
                result,
                state="done",
                p95_ms=P95[result.version],
                record_id=record.id,
                mlflow_run_id=run_id,
                node_id="node-1",
                paired=pair,
            )
        self.job_store.update(
            job.id,
            state=JobState.SUCCEEDED,
            metrics=figures,
            mlflow_run_id=run_id,
            finished_at=datetime.now(UTC),
        )
        return done


def _record(
    job_id: str,
    sha256: str,
    p95: float,
    *,
    version: int,
    run_id: str | None = None,
    at: datetime | None = None,
    pins: dict[str, str] | None = None,
    paired: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "paired": paired,
        "job_id": job_id,
        "created_at": at,
        "model_name": MODEL,
        "model_version": version,
        "checkpoint_uri": f"file:///blobs/{sha256}",
        "checkpoint_sha256": sha256,
        "model_size": "nano",
        "target": TARGET,
        "target_resources": {"CPU": 1.0},
        "node_id": "node-1",
        "backend": "torch",
        "precision": "fp32",
        "resolution": 128,
        "batch_size": 1,
        "warmup": 5,
        "runs": 30,
        "threads": 1,
        "device": "cpu",
        "p50_ms": round(p95 * 0.8, 1),
        "p95_ms": p95,
        "p99_ms": round(p95 * 1.1, 1),
        "mean_ms": round(p95 * 0.85, 1),
        "std_ms": 5.0,
        "min_ms": round(p95 * 0.7, 1),
        "max_ms": round(p95 * 1.2, 1),
        "images_per_s": round(1000 / p95, 2),
        "environment": pins or PINS,
        "mlflow_run_id": run_id,
    }


# -- the server and its seeded state -------------------------------------------------------------
@dataclass
class Console:
    """The API at ``url`` (a real uvicorn server), its services, a key per role, the runner."""

    url: str
    services: Services
    keys: dict[Role, str]
    runner: FiguresRunner
    sweep_id: str
    running_job_id: str

    def call(self, method: str, path: str, role: Role, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.keys[role]}"}
        response = httpx.request(method, f"{self.url}/api/v1{path}", headers=headers, **kwargs)
        assert response.status_code < 300, response.text
        return response.json()

    def promote(self, version: int, to: str = "production") -> dict[str, Any]:
        body = {"to": to, "reason": f"v{version} to {to}"}
        started = self.call(
            "POST", f"/models/{MODEL}/versions/{version}/promotions", Role.approver, json=body
        )
        return dict(
            wait_until(
                lambda: self.call("GET", f"/promotions/{started['id']}", Role.viewer),
                until=lambda p: p["state"] in ("applied", "failed"),
                what=f"the promotion of v{version} to {to} to end",
                timeout_s=30,
                every_s=0.1,
            )
        )


def _serve(app: Any) -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="uvicorn to start", timeout_s=30, every_s=0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def _register_versions(services: Services, folder: Path) -> None:
    """Four versions of MODEL, each a file with its own bytes and real sha256 (never loaded: the
    evidence is chosen, so no checkpoint needs to be a trained model)."""
    folder.mkdir(parents=True, exist_ok=True)
    for version in AP:
        path = folder / f"v{version}.pth"
        path.write_bytes(f"weights of version {version}".encode() * 256)
        services.versions.store.register_version(
            MODEL,
            checkpoint_uri=str(path),
            checkpoint_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            checkpoint_bytes=path.stat().st_size,
            model_size="nano",
            resolution=128,
            class_names=["square", "circle"],
            dataset_fingerprint="f" * 64,
            description=f"run {version} of the shelf fine-tune",
            actor="key:test-operator",
        )
    services.versions.mirror.sync(MODEL)


def _seed_history(services: Services) -> None:
    """Earlier benchmarks of v1 and v2 under torch 2.13.1, days before the promotions."""
    versions = {v.version: v for v in services.versions.store.list_versions(MODEL)}
    old_pins = {**PINS, "torch": "2.13.1"}
    now = datetime.now(UTC)
    for days, version, p95 in ((3, 1, 402.5), (2, 1, 388.0), (2, 2, 281.3)):
        job = services.jobs.job_store.create(
            kind="benchmark",
            spec={"target": TARGET, "model_name": MODEL, "model_version": version},
            created_by="key:test-operator",
            dataset_fingerprint=None,
        )
        services.jobs.job_store.update(job.id, state=JobState.SUCCEEDED, finished_at=now)
        services.benchmarks.add(
            _record(
                job.id,
                versions[version].checkpoint_sha256,
                p95,
                version=version,
                at=now - timedelta(days=days, hours=version),
                pins=old_pins,
            )
        )


def _seed_jobs(services: Services, dataset: str) -> tuple[str, str]:
    """A fine-tune running with progress, and a sweep with five measured trials in MLflow."""
    store = services.jobs.job_store
    finetune = store.create(
        kind="finetune",
        spec={"dataset": dataset, "model_size": "nano", "resolution": 128, "epochs": 10},
        created_by="key:test-operator",
        dataset_fingerprint="f" * 64,
    )
    store.update(
        finetune.id,
        state=JobState.RUNNING,
        started_at=datetime.now(UTC),
        progress={"epoch": 2, "step": 24, "total_steps": 80, "loss": 9.527, "eta_s": 125},
        metrics={"train/loss": 9.527, "bbox/AP": 0.1403},
    )
    spec = parse_spec(
        SweepSpec,
        {
            "dataset": dataset,
            "target": TARGET,
            "target_resources": {"CPU": 1},
            "latency_sla_ms": 200,
        },
    )
    sweep = store.create(
        kind="sweep",
        spec=spec.model_dump(mode="json"),
        created_by="key:test-operator",
        dataset_fingerprint="f" * 64,
    )
    store.update(sweep.id, state=JobState.RUNNING, started_at=datetime.now(UTC))
    tracker = services.jobs.tracker
    trials = [  # size, resolution, AP, p95
        ("nano", 128, 0.21, 120.0),
        ("nano", 160, 0.25, 180.0),
        ("small", 128, 0.23, 210.0),
        ("small", 160, 0.30, 290.0),
        ("nano", 192, 0.22, 240.0),
    ]
    for i, (size, resolution, ap, p95) in enumerate(trials):
        run = tracker.client.create_run(
            tracker.experiment_id(),
            tags={
                Tag.SWEEP_JOB_ID: sweep.id,
                Tag.TRIAL_ID: f"trial_{i:04d}",
                Tag.TRIAL_STATE: "TERMINATED",
                Tag.MODEL_SIZE: size,
                Tag.RESOLUTION: str(resolution),
                Tag.SEARCHED: json.dumps({"model_size": size, "resolution": resolution}),
                Tag.CHECKPOINT_SHA256: f"{i:064x}",
                Tag.CHECKPOINT_URI: f"file:///sweeps/{sweep.id}/trial_{i}.pth",
            },
        )
        metrics = {
            "bbox/AP": ap,
            "best/bbox/AP": ap,
            "latency_ms/p95": p95,
            "latency_ms/p50": p95 * 0.8,
        }
        for key, value in {**metrics, "epoch": 1}.items():
            tracker.client.log_metric(run.info.run_id, key, value)
    return finetune.id, sweep.id


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, synth_ds: DatasetInfo) -> Iterator[Console]:
    home = tmp_path_factory.mktemp("console")
    settings = make_settings(
        home / "home",
        database_url=f"sqlite:///{home / 'registry.db'}",
        ray_address=f"http://127.0.0.1:{free_port()}",
        artifact_root=None,
    ).model_copy(update={"mlflow_ui_url": MLFLOW_UI, "reconcile_interval_s": 0.5})
    services = build_services(settings)
    runner = FiguresRunner(job_store=services.jobs.job_store, benchmarks=services.benchmarks)
    runner.release.set()
    services.promotions = PromotionService(
        store=services.promotions.store,
        runner=runner,
        mirror=services.promotions.mirror,
        leases=services.promotions.leases,
    )
    keys = {role: services.keys.create(name=f"test-{role.value}", role=role)[1] for role in Role}
    url, server, thread = _serve(create_app(settings, services=services))
    try:
        state = Console(url, services, keys, runner, sweep_id="", running_job_id="")
        state.call(
            "POST",
            "/hardware-targets",
            Role.approver,
            json={"name": TARGET, "resources": {"CPU": 1}},
        )
        state.call(
            "POST",
            "/models",
            Role.operator,
            json={"name": MODEL, "description": "Finds products on shelves."},
        )
        state.call(
            "POST", "/models", Role.operator, json={"name": PROBE, "description": PROBE_DESCRIPTION}
        )
        _register_versions(services, home / "checkpoints")
        policy = {
            "eval": {"dataset": str(synth_ds.root)},
            "max_ap_drop": 0.02,
            "targets": [{"target": TARGET, "max_p95_ratio": 1.5}],
            "reason": "the demo's policy",
        }
        state.call("PUT", f"/models/{MODEL}/policy", Role.approver, json=policy)
        _seed_history(services)
        assert state.promote(1)["state"] == "applied"
        assert state.promote(2)["state"] == "applied"
        refused = state.promote(3)
        assert refused["state"] == "failed" and refused["message"].startswith(
            "refused: max_ap_drop"
        )
        state.running_job_id, state.sweep_id = _seed_jobs(services, str(synth_ds.root))
        yield state
    finally:
        server.should_exit = True
        thread.join(timeout=15)
