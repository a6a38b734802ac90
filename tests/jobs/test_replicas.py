"""Two API replicas (two real ``detrforge serve`` processes) on one registry and one Ray cluster.

Replica A takes a gated promotion, submits its evaluation job and stops at a failpoint before it
records the submission (the worst moment to die); the test SIGKILLs it while the job runs.
Replica B takes the lease once it expires, adopts the job under the id A recorded first, submits
the benchmark once the evaluation has ended, and finishes the promotion: each evidence job ran
once, and the audit holds one apply.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from detrforge.platform.cluster import LocalRayHead
from detrforge.platform.db import make_engine, make_session_factory, upgrade_database
from detrforge.platform.tags import Tag
from detrforge.registry.entities import JobState, Role
from detrforge.registry.jobs import JobStore
from detrforge.registry.keys import KeyStore
from detrforge.registry.leases import LeaseStore
from detrforge.registry.promotions import PromotionStore
from fixtures_cluster import (
    DATA_ROOTS,
    describe_cluster,
    make_settings,
    start_on_reserved_ports,
    wait_until,
)
from fixtures_db import POSTGRES_URL_VARIABLE, _fresh_postgres_database

pytestmark = [pytest.mark.ray, pytest.mark.slow]

LEASE_TTL_S = 4
CPU_TARGET = {"name": "cpu-1t", "resources": {"CPU": 1}, "backend": "torch", "num_threads": 1}


@dataclass
class Replica:
    """One ``detrforge serve`` process with its own home, sharing everything else."""

    name: str
    home: Path
    env: dict[str, str]
    key: str
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.home / "serve.log"

    def launch(self, port: int) -> None:
        self.port = port
        self.home.mkdir(exist_ok=True)
        cli = str(Path(sys.executable).with_name("detrforge"))
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [cli, "serve"],
                env={**self.env, "DETRFORGE_PORT": str(port)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"replica {self.name} exited:\n{self.log_text()}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(
            method,
            f"http://127.0.0.1:{self.port}/api/v1{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=60,
        )
        assert response.status_code < 300, f"{method} {path}: {response.text}"
        return response.json()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def registry_url(tmp_path: Path) -> Iterator[str]:
    """PostgreSQL when the suite has one (CI does), else one SQLite file both replicas open."""
    server = os.environ.get(POSTGRES_URL_VARIABLE)
    if server:
        yield from _fresh_postgres_database(server)
    else:
        yield f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture
def replicas(
    tmp_path: Path, registry_url: str, ray_head: LocalRayHead
) -> Iterator[tuple[Replica, Replica]]:
    """Replicas A (stops after submitting evidence jobs) and B, up and answering."""
    upgrade_database(registry_url)
    engine = make_engine(registry_url)
    _, key = KeyStore(make_session_factory(engine)).create(name="replicas", role=Role.admin)
    engine.dispose()
    shared = make_settings(  # one MLflow store and artifact root, as a deployment shares them
        tmp_path / "shared",
        database_url=registry_url,
        ray_address=ray_head.dashboard_url,
        artifact_root=(tmp_path / "artifacts").as_uri(),
    )
    env = {
        **os.environ,
        "DETRFORGE_DATABASE_URL": registry_url,
        "DETRFORGE_RAY_ADDRESS": ray_head.dashboard_url,
        "MLFLOW_TRACKING_URI": shared.resolved_tracking_uri(),
        "DETRFORGE_ARTIFACT_ROOT": shared.resolved_artifact_root(),
        "DETRFORGE_DATA_ROOTS": os.pathsep.join(str(root) for root in DATA_ROOTS),
        "DETRFORGE_RECONCILE_INTERVAL_S": "1",
        "DETRFORGE_PROMOTION_LEASE_TTL_S": str(LEASE_TTL_S),
        "DETRFORGE_PROMOTION_LEASE_RENEW_S": "1",
    }
    a = Replica(
        "A",
        tmp_path / "a",
        {
            **env,
            "DETRFORGE_HOME": str(tmp_path / "a"),
            "DETRFORGE_FAILPOINTS": "promotion.after_submit",
        },
        key,
    )
    b = Replica("B", tmp_path / "b", {**env, "DETRFORGE_HOME": str(tmp_path / "b")}, key)

    def start(ports: list[int]) -> tuple[Replica, Replica]:
        a.launch(ports[0])
        b.launch(ports[1])
        try:
            for replica in (a, b):
                wait_until(replica.healthy, timeout_s=120, what=f"replica {replica.name} to answer")
        except BaseException:
            a.stop()
            b.stop()
            raise
        return a, b

    yield start_on_reserved_ports(2, start)
    a.stop()
    b.stop()
    shutil.rmtree(tmp_path / "artifacts", ignore_errors=True)


def test_a_replica_killed_mid_promotion_leaves_it_to_another(
    replicas: tuple[Replica, Replica],
    registry_url: str,
    ray_head: LocalRayHead,
    nano_checkpoint: Path,
    pseudo_labelled_dataset: Path,
) -> None:
    a, b = replicas
    a.call("POST", "/hardware-targets", CPU_TARGET)
    a.call("POST", "/models", {"name": "replicated"})
    a.call(
        "PUT",
        "/models/replicated/policy",
        {
            "eval": {"dataset": str(pseudo_labelled_dataset), "split": "valid"},
            "ap_floor": 0.5,
            "targets": [{"target": "cpu-1t", "p95_sla_ms": 60000}],
            "benchmark_runs": 3,
            "benchmark_warmup": 1,
        },
    )
    version = a.call(
        "POST",
        "/models/replicated/versions",
        {"checkpoint": str(nano_checkpoint), "model_size": "nano", "resolution": 128},
    )
    requested = a.call("POST", "/models/replicated/versions/1/promotions", {"to": "production"})
    promotion_id = requested["id"]

    # A submits the evaluation (the benchmark waits for it) and stops before recording it.
    wait_until(
        lambda: "failpoint promotion.after_submit" in a.log.read_text(errors="replace"),
        timeout_s=120,
        what="replica A to submit the evidence jobs",
        fail_if=lambda _: None if a.process and a.process.poll() is None else a.log_text(),
    )
    engine = make_engine(registry_url)
    sessions = make_session_factory(engine)
    promotions, jobs, leases = PromotionStore(sessions), JobStore(sessions), LeaseStore(sessions)
    recorded = promotions.get(promotion_id).evidence
    assert [(e["kind"], e["state"]) for e in recorded] == [("evaluate", "submitting")]
    job_ids = [e["job_id"] for e in recorded]
    launcher_client = _ray_jobs_client(ray_head)
    assert all(
        launcher_client.get_job_info(job_id).status in ("PENDING", "RUNNING") for job_id in job_ids
    )
    holder = leases.holder(promotion_id)
    assert a.process is not None and holder is not None
    assert holder.owner.split(":")[1] == str(a.process.pid)  # host:pid:random

    a.process.send_signal(signal.SIGKILL)  # while the evidence jobs run
    assert a.process.wait(timeout=30) == -signal.SIGKILL

    final = wait_until(
        lambda: _settled(b, promotion_id),
        timeout_s=240,
        what="replica B to finish the promotion",
        explain=lambda: describe_cluster(ray_head.dashboard_url),
    )

    assert final["state"] == "applied", final["message"]
    gates = {g["gate"]: g for g in final["gate_results"]}
    assert sorted(gates) == ["ap_floor", "integrity", "p95_sla"]
    assert gates["ap_floor"]["candidate"] > 0.5 and all(g["passed"] for g in gates.values())
    # B adopted A's job under the id A recorded, then added the benchmark: each ran once.
    assert [e["kind"] for e in final["evidence"]] == ["evaluate", "benchmark"]
    assert final["evidence"][0]["job_id"] == job_ids[0]
    job_ids = [e["job_id"] for e in final["evidence"]]
    ours = [
        job
        for kind in ("evaluate", "benchmark")
        for job in jobs.list(kind=kind, limit=100)[0]
        if job.created_by == f"promotion:{promotion_id}"
    ]
    assert sorted(job.id for job in ours) == sorted(job_ids)
    assert all(job.state == JobState.SUCCEEDED for job in ours)
    submitted = [
        job
        for job in launcher_client.list_jobs()
        if version["checkpoint_uri"] in job.entrypoint
        or (job.metadata or {}).get(Tag.JOB_ID) in job_ids
    ]
    assert sorted(job.submission_id for job in submitted) == sorted(job_ids)
    events = b.call("GET", "/audit?model=replicated")["items"]
    assert [e["action"] for e in events if e["action"].startswith("promotion.")] == [
        "promotion.request",
        "promotion.apply",
    ]
    assert b.call("GET", "/models/replicated")["production_version"] == 1
    assert leases.holder(promotion_id) is None  # the lease ended with the promotion
    engine.dispose()


def _settled(replica: Replica, promotion_id: str) -> dict[str, Any] | None:
    promotion = dict(replica.call("GET", f"/promotions/{promotion_id}"))
    return promotion if promotion["state"] in ("applied", "failed") else None


def _ray_jobs_client(head: LocalRayHead) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.dashboard_url)
