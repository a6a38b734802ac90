"""The embedded Ray head: started, checked and stopped by ``detrforge serve``, on loopback.

Production points ``RAY_ADDRESS`` at a real cluster and none of this runs. We never call
``ray stop`` (it kills every Ray process on the host): the head is stopped through its own
process tree, which we record before stopping it (Ray starts job drivers in sessions of their
own, so a process-group signal alone misses them).
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detrforge.platform.errors import ClusterError

__all__ = [
    "LocalRayHead",
    "alive_node_count",
    "check_temp_dir",
    "log_tail",
    "pin_cluster_address",
    "python_shim",
    "ray_client_env",
    "stop_process_tree",
    "wait_for_port",
]

# The embedded head listens on loopback only; token auth is for heads other hosts can reach.
AUTH_MODE = "disabled"

# Ray puts unix sockets at ``<temp_dir>/session_<date>_<time>_<us>_<pid>/sockets/<name>``; the
# kernel limits a socket path to 107 bytes. The session folder takes up to 42 characters (a 7-digit
# pid), the longest name seen is ``dash_MetricsHead`` (16): 1 + 42 + 9 + 16 = 68 of the 107.
MAX_TEMP_DIR_CHARS = 39


# Ray rewrites a loopback address to the host's external one whenever it runs as a "cluster"
# (ray/_private/services.py: resolve_ip_for_localhost). A one-machine head is not one: with this
# off, Ray keeps 127.0.0.1 in every process the head starts (drivers, agents, workers).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def ray_client_env() -> dict[str, str]:
    """Environment every process that talks to the embedded head needs."""
    return {"RAY_AUTH_MODE": AUTH_MODE, "RAY_USAGE_STATS_ENABLED": "0", **LOOPBACK_ENV}


def check_temp_dir(temp_dir: Path) -> None:
    """Refuse a head temp dir whose socket paths would not fit, before Ray fails obscurely."""
    if len(str(temp_dir)) > MAX_TEMP_DIR_CHARS:
        raise ClusterError(
            f"the Ray head's temp dir {temp_dir} is {len(str(temp_dir))} characters long; Ray's "
            f"socket paths under it would exceed the 107-byte limit. Set DETRFORGE_RAY_TEMP_DIR "
            f"(or RAY_TMPDIR/TMPDIR) to a path of at most {MAX_TEMP_DIR_CHARS} characters."
        )


def pin_cluster_address(address: str, temp_dir: Path) -> None:
    """Record ``address`` as the cluster of ``temp_dir``.

    Ray's job supervisor starts each driver with ``RAY_ADDRESS`` read from
    ``<temp_dir>/ray_current_cluster``; ``cluster_utils.Cluster`` writes that file only under
    Ray's default temp dir, and without it Ray falls back to *any* GCS process on the host,
    which can be another cluster's.
    """
    from ray._private.utils import write_ray_address

    write_ray_address(address, str(temp_dir))


def python_shim(bin_dir: Path) -> Path:
    """Write ``bin_dir/python``, a script that runs this interpreter; returns ``bin_dir``.

    Jobs start as ``python -m detrforge.jobs.X``, resolved on the PATH of the node that runs
    them. The embedded head shares this venv, whose ``bin`` need not be on anyone's PATH (a venv
    never activated, a pyenv shim first): the head puts this folder first on its own PATH, so
    its jobs run this interpreter, and the jobs' entrypoint still names no path of this machine.
    A script rather than a symlink: a symlinked venv interpreter does not find its venv.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "python"
    tmp = bin_dir / f".python.{os.getpid()}"
    tmp.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    tmp.chmod(0o755)
    os.replace(tmp, shim)
    return bin_dir


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    """True once ``host:port`` accepts a TCP connection, False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ("" when it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# How long the root of a tree gets to stop its own children before they are signalled too.
ROOT_GRACE_S = 10.0


def _terminate(procs: list[Any]) -> None:
    import psutil

    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass


def stop_process_tree(pid: int, *, timeout_s: float = 30.0) -> list[int]:
    """Stop ``pid`` (SIGTERM to it alone first), then its process group and every descendant:
    SIGTERM, then SIGKILL after a wait.

    ``pid`` leads its own process group (it was started in a new session), so the group still
    reaches Ray's GCS and raylet when ``pid`` itself is already gone. Descendants in sessions of
    their own (job drivers) are listed *before* anything is signalled: once their parent exits
    they are re-parented and no longer findable. Returns the pids that needed SIGKILL.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    members = {p.pid for p in tree}
    for proc in psutil.process_iter():
        try:
            if proc.pid not in members and os.getpgid(proc.pid) == pid:
                tree.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    # The root first, alone: a process that shuts its own children down (the Ray head script
    # stops its GCS, raylet and workers in ~4 s) does it best undisturbed; SIGTERM to all of
    # them at once left Ray's GCS and raylet waiting on each other until the SIGKILL, 30 s on.
    deadline = time.monotonic() + timeout_s
    if tree and tree[0].pid == pid:
        _terminate(tree[:1])
        psutil.wait_procs(tree[:1], timeout=min(ROOT_GRACE_S, timeout_s))
    alive = [proc for proc in tree if proc.is_running()]
    _terminate(alive)
    _, alive = psutil.wait_procs(alive, timeout=max(0.0, deadline - time.monotonic()))
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    return [p.pid for p in alive]


@dataclass
class LocalRayHead:
    """A single-node Ray head in a child process (``detrforge.platform.ray_head``).

    Every file of the head lives under ``temp_dir``: Ray's session folders, its
    ``ray_current_cluster`` file, ``ray-head.log`` (this process's output) and ``bin/python``
    (:func:`python_shim`: the ``python`` its jobs start with).
    """

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

    @property
    def log_path(self) -> Path:
        return self.temp_dir / "ray-head.log"

    def start(self, *, timeout_s: float = 120.0) -> LocalRayHead:
        """Start the head; return once its Jobs API answers and its node is alive."""
        import json

        check_temp_dir(self.temp_dir)
        for port, name in ((self.gcs_port, "GCS"), (self.dashboard_port, "dashboard")):
            if wait_for_port("127.0.0.1", port, 0):
                raise ClusterError(
                    f"port {port} (the Ray head's {name}) is already in use; stop what holds it "
                    "(`detrforge cluster down` for a head an earlier serve left), set "
                    "DETRFORGE_RAY_GCS_PORT / DETRFORGE_RAY_DASHBOARD_PORT to free ports, or "
                    "point RAY_ADDRESS at the running cluster"
                )
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
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
        shims = python_shim(self.temp_dir / "bin")
        env["PATH"] = os.pathsep.join(p for p in (str(shims), env.get("PATH", "")) if p)
        try:
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        finally:
            log.close()
        try:
            self._wait_ready(time.monotonic() + timeout_s)
        except BaseException:  # a failed check, or SIGTERM/Ctrl-C while we wait
            self.stop()
            raise
        return self

    def _wait_ready(self, deadline: float) -> None:
        problem = "it did not answer"
        while time.monotonic() < deadline:
            problem = self.check() or ""
            if not problem:
                return
            if not self.alive():
                break
            time.sleep(0.5)
        raise ClusterError(
            f"the local Ray head did not come up: {problem}. Last lines of {self.log_path}:\n"
            + log_tail(self.log_path)
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> str | None:
        """None when the head is usable (process up, Jobs API answers, a node alive), else why."""
        import httpx

        if self.process is None:
            return "it was never started"
        code = self.process.poll()
        if code is not None:
            return f"its process (pid {self.process.pid}) exited with code {code}"
        try:
            version = httpx.get(f"{self.dashboard_url}/api/version", timeout=2.0)
        except httpx.HTTPError as exc:
            return f"its Jobs API at {self.dashboard_url} does not answer ({type(exc).__name__})"
        if version.status_code != 200:
            return f"its Jobs API answered HTTP {version.status_code}"
        return None if alive_node_count(self.dashboard_url) > 0 else "no node is alive yet"

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop the head and everything it started: GCS, raylet, workers, job drivers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            stop_process_tree(self.process.pid, timeout_s=timeout_s)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def alive_node_count(dashboard_url: str) -> int:
    """How many nodes the cluster behind ``dashboard_url`` reports alive (0 when it can't say)."""
    from ray.util.state import list_nodes

    try:
        nodes = list_nodes(address=dashboard_url, timeout=5, raise_on_missing_output=False)
    except Exception:  # noqa: BLE001 - any failure to list means "not usable yet"
        return 0
    return sum(1 for n in nodes if n.state == "ALIVE")
