"""The embedded Ray head: started on demand by ``detrforge serve``, on loopback, on our own ports.

Production points ``RAY_ADDRESS`` at a real cluster and none of this runs. We never call
``ray stop`` (it kills every Ray process on the host): the head is stopped by its process group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from detrforge.platform.errors import ClusterError

__all__ = ["LocalRayHead", "pin_cluster_address", "ray_client_env", "wait_for_port"]

# The embedded head listens on loopback only; token auth is for heads other hosts can reach.
AUTH_MODE = "disabled"


# Ray rewrites a loopback address to the host's external one whenever it runs as a "cluster"
# (ray/_private/services.py: resolve_ip_for_localhost). A one-machine head is not one: with this
# off, Ray keeps 127.0.0.1 in every process the head starts (drivers, agents, workers).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def ray_client_env() -> dict[str, str]:
    """Environment every process that talks to the embedded head needs."""
    return {"RAY_AUTH_MODE": AUTH_MODE, "RAY_USAGE_STATS_ENABLED": "0", **LOOPBACK_ENV}


def pin_cluster_address(address: str, temp_dir: Path) -> None:
    """Record ``address`` as the cluster of ``temp_dir``.

    Ray's job supervisor starts each driver with ``RAY_ADDRESS`` read from
    ``<temp_dir>/ray_current_cluster``; ``cluster_utils.Cluster`` writes that file only under the
    default ``/tmp/ray``, and without it Ray falls back to *any* GCS process on the host, which
    can be another cluster's.
    """
    from ray._private.utils import write_ray_address

    write_ray_address(address, str(temp_dir))


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    """True once ``host:port`` accepts a TCP connection, False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.2)
    return False


@dataclass
class LocalRayHead:
    """A single-node Ray head in a child process (``detrforge.platform.ray_head``)."""

    temp_dir: Path
    gcs_port: int = 6390
    dashboard_port: int = 8275
    num_cpus: int | None = None
    resources: dict[str, float] | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, *, timeout_s: float = 90.0) -> LocalRayHead:
        """Start the head and wait until its GCS and dashboard (the Jobs API) answer."""
        if wait_for_port("127.0.0.1", self.gcs_port, 0.2):
            raise ClusterError(
                f"port {self.gcs_port} is already in use; set DETRFORGE_RAY_GCS_PORT to a free "
                "port or point RAY_ADDRESS at the running cluster"
            )
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.temp_dir / "ray-head.log", "ab")  # noqa: SIM115 - lives with the process
        cmd = [
            sys.executable,
            "-m",
            "detrforge.platform.ray_head",
            f"--port={self.gcs_port}",
            f"--dashboard-port={self.dashboard_port}",
            f"--temp-dir={self.temp_dir}",
            f"--resources={json.dumps(self.resources or {})}",
        ]
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        env = {**os.environ, **ray_client_env()}
        # Its own address: with several Ray clusters on one host, processes the head starts must
        # not guess "the latest cluster" (Ray Train's PlacementGroupCleaner did).
        env["RAY_ADDRESS"] = self.address
        self.process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        for port in (self.gcs_port, self.dashboard_port):
            left = max(0.1, deadline - time.monotonic())
            if not wait_for_port("127.0.0.1", port, left) or self.process.poll() is not None:
                self.stop()
                raise ClusterError(
                    f"the local Ray head did not come up on port {port} within {timeout_s:.0f} s; "
                    f"see {self.temp_dir / 'ray-head.log'}"
                )
        self._wait_jobs_api(deadline)
        return self

    def _wait_jobs_api(self, deadline: float) -> None:
        import httpx

        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.dashboard_url}/api/version", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ClusterError("the local Ray head's Jobs API did not answer in time")

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop the head and every process it started (its own process group)."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass
