"""``python -m detrforge.platform.ray_head``: a single-node Ray head held by this process.

``ray start --node-ip-address=127.0.0.1`` silently swaps loopback for the host's external
address (and then listens on every interface). Starting the node through Ray's own
``ray.cluster_utils.Cluster`` keeps ``127.0.0.1``, so every Ray listener stays on loopback.
SIGTERM shuts the node down and exits; so does the death of the process that started this one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path

__all__ = ["main"]

_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Ask Linux for SIGTERM when our parent (``serve``, a test) dies, so no head is orphaned."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detrforge.platform.ray_head")
    parser.add_argument("--port", type=int, required=True, help="GCS port")
    parser.add_argument("--dashboard-port", type=int, required=True)
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--resources", default="{}", help="custom resources as JSON")
    parser.add_argument("--temp-dir", required=True)
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    _die_with_parent()

    temp_dir = Path(args.temp_dir)
    # Ray's "default temp dir" (``$RAY_TMPDIR/ray``) is where ``Cluster`` writes
    # ``ray_current_cluster``; Ray never creates it, so on a machine that has never run Ray the
    # head died with FileNotFoundError. Point it inside our own temp dir and create it.
    os.environ["RAY_TMPDIR"] = str(temp_dir)
    (temp_dir / "ray").mkdir(parents=True, exist_ok=True)

    from ray.cluster_utils import Cluster

    head_args = {
        "gcs_server_port": args.port,
        "node_ip_address": "127.0.0.1",
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": args.dashboard_port,
        # The agent's default port (52365) is shared by every head on the host: pick a free one.
        "dashboard_agent_listen_port": _free_port(),
        "temp_dir": str(temp_dir),
        "resources": json.loads(args.resources),
        "object_store_memory": 512 * 1024 * 1024,
        "num_cpus": args.num_cpus if args.num_cpus is not None else (os.cpu_count() or 1),
    }
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    from detrforge.platform.cluster import pin_cluster_address

    pin_cluster_address(cluster.address, temp_dir)
    print(f"ray head up at {cluster.address} (temp dir {temp_dir})", flush=True)
    stop.wait()
    cluster.shutdown()  # type: ignore[no-untyped-call]
    return 0


if __name__ == "__main__":
    sys.exit(main())
