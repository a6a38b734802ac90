"""What every job driver shares: its MLflow run, its failure record, its exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detrforge import __version__
from detrforge.platform.cluster import wait_for_port
from detrforge.platform.errors import ClusterError, DetrforgeError
from detrforge.platform.launcher import API_VERSION_ENV, require_resources
from detrforge.platform.scratch import job_scratch_dir
from detrforge.platform.settings import Settings
from detrforge.platform.tags import Tag
from detrforge.platform.tracking import Tracker

__all__ = [
    "JobContext",
    "check_api_version",
    "check_resources",
    "exit_when_cluster_gone",
    "ray_storage_path",
    "run_driver",
]

# Exit code of a driver whose cluster went away under it (EX_TEMPFAIL).
CLUSTER_GONE_EXIT = 75


class JobContext:
    """A running job's identity and tracking, handed to the job's body."""

    def __init__(self, *, job_id: str, kind: str, spec: dict[str, Any], settings: Settings) -> None:
        self.job_id = job_id
        self.kind = kind
        self.spec = spec
        self.settings = settings
        self.artifact_root = settings.resolved_artifact_root()
        self.tracking_uri = settings.resolved_tracking_uri()
        self.tracker = Tracker(self.tracking_uri, artifact_root=self.artifact_root)
        self.run_id = ""

    @property
    def workdir(self) -> Path:
        """This job's scratch folder on the driver's node. The job removes it when it ends; the
        API's reconciler removes it after a driver killed by SIGKILL (``platform/scratch.py``)."""
        return job_scratch_dir(self.job_id)


def ray_storage_path(artifact_root: str) -> str:
    """Where Ray Train and Tune keep a run's state: ``ray/`` under the artifact root."""
    if artifact_root.startswith("file://"):
        return str(Path(artifact_root.removeprefix("file://")) / "ray")
    return f"{artifact_root}/ray"


def check_resources(wanted: dict[str, float], *, what: str, field: str) -> None:
    """Fail fast when no alive node offers ``wanted`` (Ray would otherwise wait forever)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
    require_resources([n.get("Resources", {}) for n in nodes], wanted, what=what, field=field)


def check_api_version(api_version: str | None, node_version: str = __version__) -> None:
    """Raise unless the API that sent this job runs the detrforge this node runs.

    The API and the cluster's image are installed apart; jobs of another version read specs and
    write results the API may misread, so they stop before doing anything. A job without the
    API's version (started by hand) is not checked.

    Raises:
        ClusterError: the versions differ.
    """
    if api_version and api_version != node_version:
        raise ClusterError(
            f"detrforge {node_version} on this node, the API is {api_version}: install the same "
            "version on the cluster's image"
        )


def exit_when_cluster_gone(gcs_address: str, *, every_s: float = 5.0, misses: int = 3) -> None:
    """Exit this process once the cluster's GCS stops answering ``misses`` checks in a row.

    A driver outlived its head for ten minutes once (and ignored SIGTERM): whatever keeps the
    main thread busy, a driver whose cluster is gone must not linger.
    """
    host, _, port = gcs_address.rpartition(":")

    def watch() -> None:
        missed = 0
        while True:
            missed = 0 if wait_for_port(host, int(port), 2.0) else missed + 1
            if missed >= misses:
                print(
                    f"detrforge: the Ray cluster at {gcs_address} is gone; this driver exits",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(CLUSTER_GONE_EXIT)
            threading.Event().wait(every_s)

    threading.Thread(target=watch, name="cluster-watch", daemon=True).start()


def run_driver(
    kind: str, body: Callable[[JobContext], dict[str, str]], argv: list[str] | None = None
) -> int:
    """Parse ``--job-id/--spec``, open the job's MLflow run, run ``body``, record the outcome.

    ``body`` returns extra tags for the run. Exit code 0 on success, 1 on failure; the reason is
    the run's ``detrforge.error`` tag, which the API reconciles into the job.
    """
    parser = argparse.ArgumentParser(prog=f"detrforge.jobs.{kind}")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--spec", required=True, help="the job's spec as JSON")
    parser.add_argument("--dataset-fingerprint", default="")
    args = parser.parse_args(argv)

    import ray

    ctx = JobContext(job_id=args.job_id, kind=kind, spec=json.loads(args.spec), settings=Settings())
    ctx.run_id = ctx.tracker.start_job_run(
        args.job_id,
        run_name=f"{kind}-{args.job_id}",
        params=ctx.spec,
        tags={
            Tag.KIND: kind,
            Tag.DATASET_FINGERPRINT: args.dataset_fingerprint,
            Tag.RAY_JOB_ID: os.environ.get("RAY_JOB_SUBMISSION_ID", ""),
        },
    )
    print(f"detrforge: job {args.job_id} MLflow run {ctx.run_id}", flush=True)
    # Which code the node runs: an image with another install than the API's shows here first.
    print(
        f"detrforge: {__version__} from {Path(__file__).resolve().parents[1]}, "
        f"python {sys.executable}",
        flush=True,
    )
    try:
        check_api_version(os.environ.get(API_VERSION_ENV))
        ray.init(log_to_driver=True)
        exit_when_cluster_gone(ray.get_runtime_context().gcs_address)
        tags = body(ctx)
    except BaseException as exc:  # noqa: BLE001 - a failed job records why, whatever it was
        message = exc.message if isinstance(exc, DetrforgeError) else f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        ctx.tracker.set_tags(ctx.run_id, {Tag.ERROR: message[:5000]})
        ctx.tracker.end_run(
            ctx.run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        )
        print(f"detrforge: job {args.job_id} FAILED: {message}", file=sys.stderr, flush=True)
        return 1
    ctx.tracker.set_tags(ctx.run_id, tags)
    ctx.tracker.end_run(ctx.run_id, "FINISHED")
    print(f"detrforge: job {args.job_id} SUCCEEDED", flush=True)
    return 0
