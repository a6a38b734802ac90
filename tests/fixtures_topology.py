"""A Ray cluster shaped like production, on one machine: nodes started with ``ray start`` from a
venv of their own where detrforge is installed from its built wheel.

``wheel_cluster`` (session scope, started on first use) yields a :class:`WheelCluster`:

* **The cluster's venv** is another folder than this one (the API's): a fresh ``python -m venv``
  whose ``site-packages`` holds hard links to this venv's third-party packages (the same pinned
  versions, without 8 GB of copies or a 5-minute install) and detrforge from a wheel built from
  this checkout (``pip wheel``), not the editable install. Nothing of the API's venv or source
  tree is on its ``sys.path``. It lives beside this venv (hard links need one filesystem) in
  ``.cluster-venvs/`` and is deleted afterwards.
* **The nodes** are that venv's ``ray start``: a head (``--head``, 1 CPU, the Jobs API) and a
  worker node (1 CPU) that alone offers the custom resource ``hw_topo``, each in the foreground
  (``--block``) in its own session, so it is stopped by PID. Their environment is built from
  nothing but ``PATH`` (the cluster venv's ``bin`` first: jobs start as ``python -m
  detrforge.jobs...``), ``HOME``, the locale and Ray's settings: no variable of the API's
  (``DETRFORGE_*``, ``AWS_*``, ``PYTHONPATH``) reaches a node except through a job's own env.
* **Loopback only.** A worker node joining a head on the same host is what Ray's ``ray start``
  refuses on loopback: it allows a second node only with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1``,
  and that same variable makes it rewrite ``127.0.0.1`` to the host's external address and bind
  every interface. The worker node's ``ray start`` therefore runs Ray's own CLI
  (``ray.scripts.scripts.main``) with that guard lifted inside the CLI process alone and
  ``127.0.0.1`` kept as the node's address; every process the node starts sees the variable off
  and listens on loopback, as the head's do. On separate hosts (KubeRay) plain ``ray start
  --address`` does this.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from detrforge.platform.cluster import alive_node_count, ray_client_env, stop_process_tree
from fixtures_cluster import start_on_reserved_ports

__all__ = ["WheelCluster", "listeners", "wheel_cluster"]

REPO = Path(__file__).resolve().parents[1]
WORKER_RESOURCE = "hw_topo"
_START_TIMEOUT_S = 120.0

# ``ray start`` for a second node on this host, on loopback (see the module docstring).
_WORKER_NODE_CLI = """
import sys
import ray._private.ray_constants as constants
import ray._private.services as services
constants.ENABLE_RAY_CLUSTER = True  # the Windows/OSX guard, in this process only
services.node_ip_address_from_perspective = lambda address=None: "127.0.0.1"
from ray.scripts.scripts import main
sys.argv[0] = "ray"
main()
"""


@dataclass
class WheelCluster:
    """Two ``ray start`` nodes running the cluster venv's Python."""

    venv: Path
    temp_dir: Path
    gcs_port: int
    dashboard_port: int
    head: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    worker_node_id: str = ""
    logs: list[Path] = field(default_factory=list)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def alive(self) -> str | None:
        """Why the cluster is gone (an ``alive`` check for waits), None while both nodes run."""
        nodes = zip(("head", "worker"), (self.head, self.worker), self.logs, strict=False)
        for name, process, log in nodes:
            if process is not None and process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                return f"the {name} node's `ray start` exited ({process.returncode}):\n{tail}"
        return None

    def stop(self) -> None:
        """Stop both nodes at once, by PID. ``ray start --block`` outlives its SIGTERM (its
        children exit, it does not), so each gets a short grace before SIGKILL."""
        running = [p for p in (self.worker, self.head) if p is not None and p.poll() is None]
        stoppers = [
            threading.Thread(target=stop_process_tree, args=(p.pid,), kwargs={"timeout_s": 6})
            for p in running
        ]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()


def listeners(cluster: WheelCluster) -> list[tuple[str, str]]:
    """``(address:port, process name)`` of every listening socket of the cluster's processes."""
    import psutil

    found = []
    for root in (cluster.head, cluster.worker):
        if root is None:
            continue
        try:
            tree = [psutil.Process(root.pid), *psutil.Process(root.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in tree:
            try:
                sockets = proc.net_connections(kind="inet")
                name = proc.name()
            except psutil.Error:
                continue
            found += [
                (f"{c.laddr.ip}:{c.laddr.port}", name)
                for c in sockets
                if c.status == psutil.CONN_LISTEN
            ]
    return found


def build_wheel(out: Path) -> Path:
    """detrforge's wheel, built from a copy of this checkout's sources (the tree stays clean)."""
    source = out / "source"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["--wheel-dir", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    [wheel] = out.glob("detrforge-*.whl")
    return wheel


def make_cluster_venv(venv: Path, wheel: Path) -> Path:
    """A venv at ``venv`` with this venv's third-party packages (hard links) and ``wheel``."""
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(venv)], check=True)
    ours = Path(sysconfig.get_paths()["purelib"])
    theirs = venv / ours.relative_to(sys.prefix)
    shutil.rmtree(theirs)
    # cp -al: 100k+ files in ~3 s; a Python copytree with os.link takes several times longer.
    subprocess.run(["cp", "-al", str(ours), str(theirs)], check=True)
    for editable in [*theirs.glob("__editable__*detrforge*"), *theirs.glob("detrforge-*")]:
        if editable.is_dir():
            shutil.rmtree(editable)
        else:
            editable.unlink()
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
        + ["--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    return venv


def _node_env(venv: Path) -> dict[str, str]:
    """A node's whole environment: nothing of the API's but PATH's system part and the locale."""
    env = {
        "PATH": os.pathsep.join([str(venv / "bin"), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "TMPDIR": tempfile.gettempdir(),
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        **ray_client_env(),
    }
    return env


def _wait_nodes(cluster: WheelCluster, count: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        problem = cluster.alive()
        if problem:
            raise RuntimeError(problem)
        try:
            if alive_node_count(cluster.dashboard_url) >= count:
                return
        except Exception:  # the dashboard is not up yet
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{count} Ray node(s) not alive after {_START_TIMEOUT_S:g} s: {cluster}")


def _start(venv: Path, temp_dir: Path, ports: list[int]) -> WheelCluster:
    gcs, dashboard, client, head_agent, worker_agent = ports
    cluster = WheelCluster(venv=venv, temp_dir=temp_dir, gcs_port=gcs, dashboard_port=dashboard)
    env = _node_env(venv)
    python = str(cluster.python)
    common = ["--block", "--num-cpus=1", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    head_cmd = [python, "-m", "ray.scripts.scripts", "start", "--head", *common]
    head_cmd += [
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={head_agent}",
        f"--temp-dir={temp_dir}",
    ]
    worker_cmd = [python, "-c", _WORKER_NODE_CLI, "start", *common]
    worker_cmd += [
        f"--address={cluster.address}",
        f"--dashboard-agent-listen-port={worker_agent}",
        f"--resources={json.dumps({WORKER_RESOURCE: 1})}",
    ]
    cluster.logs = [temp_dir / "head.log", temp_dir / "worker.log"]
    deadline = time.monotonic() + _START_TIMEOUT_S
    try:
        with cluster.logs[0].open("ab") as log:
            cluster.head = subprocess.Popen(
                head_cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=temp_dir,
                start_new_session=True,
            )
        _wait_nodes(cluster, 1, deadline)
        with cluster.logs[1].open("ab") as log:
            cluster.worker = subprocess.Popen(
                worker_cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=temp_dir,
                start_new_session=True,
            )
        _wait_nodes(cluster, 2, deadline)
    except BaseException:
        cluster.stop()
        raise
    cluster.worker_node_id = _node_with(cluster.dashboard_url, WORKER_RESOURCE)
    return cluster


def _node_with(dashboard_url: str, resource: str) -> str:
    from ray.util.state import list_nodes

    [node] = [
        n
        for n in list_nodes(address=dashboard_url)
        if n.state == "ALIVE" and resource in (n.resources_total or {})
    ]
    return str(node.node_id)


@pytest.fixture(scope="session")
def wheel_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WheelCluster]:
    """Two ``ray start`` nodes on loopback from a wheel-installed venv; see the module docstring."""
    venvs = Path(sys.prefix).parent / ".cluster-venvs"
    venv = venvs / f"venv-{uuid.uuid4().hex[:8]}"
    # Ray's socket paths live under the temp dir: keep it short (fixtures_cluster.ray_head).
    temp_dir = Path(tempfile.mkdtemp(prefix="dftopo-"))
    cluster: WheelCluster | None = None
    try:
        wheel = build_wheel(tmp_path_factory.mktemp("wheel"))
        make_cluster_venv(venv, wheel)
        cluster = start_on_reserved_ports(5, lambda ports: _start(venv, temp_dir, ports))
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(temp_dir, ignore_errors=True)
