"""``detrforge serve`` as a new user runs it: its own process, home, empty temp dir and ports.

No warm state: the environment holds nothing of the developer's (no database, tracking, S3 or
Ray settings), the system temp dir is a new empty folder, and serve starts its own Ray head.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from detrforge.detector.data import DatasetInfo
from fixtures_cluster import DATA_ROOTS, TINY_SPEC, start_on_reserved_ports, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]

_KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


class UserServe:
    """One ``detrforge serve`` process as a user starts it, and what its head left behind."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        # The system temp dir of this serve: new and empty (short: Ray's socket paths live in it).
        self.tmp = Path(tempfile.mkdtemp(prefix="dfu-", dir="/tmp"))
        self.base = ""  # set by start(), with the ports
        self.env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
        self.env.update(
            {
                "DETRFORGE_HOME": str(self.home),
                "DETRFORGE_RAY_NUM_CPUS": "2",
                "DETRFORGE_HEAD_EXIT_GRACE_S": "5",
                "TMPDIR": str(self.tmp),
                # Where its datasets may come from: the fixtures write them under pytest's base.
                "DETRFORGE_DATA_ROOTS": ",".join(str(root) for root in DATA_ROOTS),
                "HF_HUB_OFFLINE": "1",
                "MLFLOW_DISABLE_TELEMETRY": "true",
            }
        )
        self.log = root / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def head_temp_dir(self) -> str:
        return str(self.tmp / f"detrforge-ray-{self.env['DETRFORGE_RAY_GCS_PORT']}")

    def start(self) -> UserServe:
        """Start serve (API, GCS and dashboard ports reserved until it binds them); wait ready."""
        return start_on_reserved_ports(3, self._start_on)

    def _start_on(self, ports: list[int]) -> UserServe:
        api, gcs, dashboard = ports
        self.base = f"http://127.0.0.1:{api}"
        self.env.update(
            {
                "DETRFORGE_PORT": str(api),
                "DETRFORGE_RAY_GCS_PORT": str(gcs),
                "DETRFORGE_RAY_DASHBOARD_PORT": str(dashboard),
            }
        )
        cli = str(Path(sys.executable).with_name("detrforge"))
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [cli, "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(
            self.ready_status,
            until=lambda status: status == 200,
            timeout_s=150,
            every_s=0.5,
            what="serve to answer /ready with 200",
        )
        return self

    def ready_status(self) -> int | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"serve exited {self.process.returncode}:\n{self.log_text()}")
        try:
            return httpx.get(f"{self.base}/ready", timeout=10).status_code
        except httpx.HTTPError:
            return None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {(self.home / 'admin.key').read_text().strip()}"}

    def job(self, job_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base}/api/v1/finetune-jobs/{job_id}", headers=self.headers())
        assert response.status_code == 200, response.text
        return dict(response.json())

    def head_processes(self) -> list[psutil.Process]:
        """Live processes of this serve's head: the head marks each with its RAY_TMPDIR."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("RAY_TMPDIR") == self.head_temp_dir:
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=90)


@pytest.fixture
def user_serve(tmp_path: Path) -> Iterator[UserServe]:
    serve = UserServe(tmp_path)
    yield serve
    if serve.process is not None and serve.process.poll() is None:
        serve.process.kill()
        serve.process.wait(timeout=30)
    for proc in serve.head_processes():
        proc.kill()
    shutil.rmtree(serve.tmp, ignore_errors=True)
    shutil.rmtree(serve.home / "artifacts", ignore_errors=True)


def _cli(serve: UserServe, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    cli = str(Path(sys.executable).with_name("detrforge"))
    env = {**serve.env, "DETRFORGE_API_URL": serve.base}
    return subprocess.run(
        [cli, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def test_serve_from_nothing_fine_tunes_then_sigterm_leaves_no_ray_process(
    user_serve: UserServe, synth_ds: DatasetInfo
) -> None:
    serve = user_serve.start()
    # Ray's default temp dir ($TMPDIR/ray), which the head used to need and never created, is
    # not used: every file of the head is in its own folder.
    assert not (serve.tmp / "ray").exists()
    assert (Path(serve.head_temp_dir) / "ray_current_cluster").is_file()
    # Every listener of the head is on loopback.
    listeners = {
        (c.laddr.ip, c.laddr.port)
        for proc in serve.head_processes()
        for c in proc.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert listeners and all(_loopback(ip) for ip, _ in listeners), listeners
    status = _cli(serve, "status", timeout_s=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "ok   ray" in status.stdout and "node(s) alive" in status.stdout

    # A 1-worker Nano fine-tune through the CLI, as the README shows it.
    submitted = _cli(
        serve,
        "finetune", "submit", "--dataset", synth_ds.root, "--model-size", "nano",
        "--resolution", "128", "--epochs", "1", "--batch-size", "4", "--num-queries", "50",
        "--group-detr", "1", "--num-workers", "1", "--wait",
        timeout_s=600,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = submitted.stdout.strip()
    job = serve.job(job_id)
    assert job["state"] == "SUCCEEDED", job.get("error")
    model = Path(urlsplit(job["model_uri"]).path)
    assert model.is_relative_to(serve.home / "artifacts")
    assert hashlib.sha256(model.read_bytes()).hexdigest() == job["model_sha256"]

    # A second job is running when serve gets SIGTERM: its driver must not outlive the head.
    running = httpx.post(
        f"{serve.base}/api/v1/finetune-jobs",
        json={**TINY_SPEC, "dataset": synth_ds.root, "epochs": 20, "num_workers": 1},
        headers=serve.headers(),
        timeout=60,
    ).json()["id"]
    wait_until(lambda: _driver_pids(running), timeout_s=120, every_s=0.5)
    wait_until(lambda: serve.job(running)["state"] == "RUNNING", timeout_s=120)
    assert serve.stop() == 0, serve.log_text()
    assert "stopped the local head" in serve.log_text()
    wait_until(lambda: not serve.head_processes() and not _driver_pids(running), timeout_s=20)


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _driver_pids(job_id: str) -> list[int]:
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "detrforge.jobs.finetune" in cmdline and job_id in cmdline:
            pids.append(proc.pid)
    return pids


def test_a_dead_head_turns_readiness_503_and_serve_exits_saying_so(
    user_serve: UserServe,
) -> None:
    serve = user_serve.start()
    head_pid = int((serve.home / "ray" / "head.pid").read_text())
    os.killpg(head_pid, signal.SIGKILL)

    def not_ready() -> dict[str, Any] | None:
        response = httpx.get(f"{serve.base}/ready", timeout=10)
        return dict(response.json()) if response.status_code == 503 else None

    body = wait_until(not_ready, timeout_s=15, every_s=0.2)
    assert body["components"]["ray"]["ok"] is False
    assert "Ray" in body["components"]["ray"]["message"]
    assert body["components"]["database"]["ok"] is True
    assert serve.process is not None
    assert serve.process.wait(timeout=60) == 1
    log = serve.log_text()
    assert f"Ray: the local head is down (its process (pid {head_pid}) exited" in log
    assert "Last lines of" in log and "ray head up at" in log  # the head log's tail
    time.sleep(1)
    assert not serve.head_processes()
