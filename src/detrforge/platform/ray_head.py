"""``python -m detrforge.platform.ray_head``: a single-node Ray head held by this process.

``ray start --node-ip-address=127.0.0.1`` silently swaps loopback for the host's external
address (and then listens on every interface). Starting the node through Ray's own
``ray.cluster_utils.Cluster`` keeps ``127.0.0.1``, so every Ray listener stays on loopback.
SIGTERM shuts the node down and exits.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading

__all__ = ["main"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detrforge.platform.ray_head")
    parser.add_argument("--port", type=int, required=True, help="GCS port")
    parser.add_argument("--dashboard-port", type=int, required=True)
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--resources", default="{}", help="custom resources as JSON")
    parser.add_argument("--temp-dir", required=True)
    args = parser.parse_args(argv)

    from ray.cluster_utils import Cluster

    head_args = {
        "gcs_server_port": args.port,
        "node_ip_address": "127.0.0.1",
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": args.dashboard_port,
        # The agent's default port (52365) is shared by every head on the host: pick a free one.
        "dashboard_agent_listen_port": _free_port(),
        "temp_dir": args.temp_dir,
        "resources": json.loads(args.resources),
        "object_store_memory": 512 * 1024 * 1024,
        "num_cpus": args.num_cpus,
    }
    if args.num_cpus is None:
        import os

        head_args["num_cpus"] = os.cpu_count() or 1
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    from pathlib import Path

    from detrforge.platform.cluster import pin_cluster_address

    pin_cluster_address(cluster.address, Path(args.temp_dir))
    print(f"ray head up at {cluster.address}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    cluster.shutdown()  # type: ignore[no-untyped-call]
    return 0


if __name__ == "__main__":
    sys.exit(main())
