"""The launcher: submits job entrypoints to Ray through the Jobs API (``JobSubmissionClient``).

Ray's Jobs API runs arbitrary code for anyone who reaches it, so only the control API talks to it
and users never do. An entrypoint is ``python -m <module>``, where ``python`` is resolved on the
node that runs the job (or a configured interpreter, ``DETRFORGE_JOB_PYTHON``): the API's own
interpreter path means nothing on a KubeRay pod or another host. Each job carries the API's
detrforge version (:data:`API_VERSION_ENV`), which the job checks against its own first.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from detrforge import __version__
from detrforge.platform.errors import ClusterError, NotFoundError, ResourceUnavailableError

__all__ = [
    "API_VERSION_ENV",
    "DEFAULT_JOB_PYTHON",
    "JobStatus",
    "Launcher",
    "require_capacity",
    "require_resources",
]

# The runtime-env variable that carries the API's detrforge version to every job.
API_VERSION_ENV = "DETRFORGE_API_VERSION"
# The interpreter a job starts with unless configured: whichever ``python`` the node's PATH has.
DEFAULT_JOB_PYTHON = "python"


def require_resources(
    nodes: list[dict[str, float]], wanted: dict[str, float], *, what: str, field: str
) -> None:
    """Raise unless one node in ``nodes`` (each its total resources) offers all of ``wanted``.

    Ray would leave a request no node can satisfy pending forever; we refuse it at once.
    """
    if any(all(n.get(k, 0.0) >= v for k, v in wanted.items()) for n in nodes):
        return
    offered = sorted({k for n in nodes for k in n if not k.startswith("node:")})
    raise ResourceUnavailableError(
        f"no node in the cluster offers {what} ({wanted}); the cluster has {offered}. Add a "
        "node with that hardware, or ask for less.",
        field=field,
    )


# Slack for float division: 0.9 CPU holds three workers of 0.3 although 0.9 // 0.3 == 2.0.
_EPSILON = 1e-9


def require_capacity(
    nodes: list[dict[str, float]], per_worker: dict[str, float], workers: int
) -> None:
    """Raise unless ``workers`` workers of ``per_worker`` each fit the alive ``nodes`` at once.

    A worker cannot span nodes, so capacity is counted per node (how many whole workers each
    node holds), not as the cluster's sum: Ray would otherwise leave the job pending until the
    schedule timeout.
    """
    require_resources(
        nodes, per_worker, what="one worker's resources", field="resources_per_worker"
    )
    placeable = sum(
        min(int((node.get(k, 0.0) + _EPSILON) // v) for k, v in per_worker.items())
        for node in nodes
    )
    if placeable < workers:
        totals = {k: sum(n.get(k, 0.0) for n in nodes) for k in per_worker}
        raise ResourceUnavailableError(
            f"num_workers={workers} workers of {per_worker} do not fit the cluster: its "
            f"{len(nodes)} alive node(s) hold {placeable} such worker(s) (in all {totals}). "
            "Ask for fewer workers or less per worker, or add nodes.",
            field="num_workers",
        )


@dataclass(frozen=True)
class JobStatus:
    """Ray's view of one submitted job."""

    status: str  # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    message: str | None


class Launcher:
    """Submits ``python -m <module> <args>`` jobs to one Ray cluster and follows them.

    Args:
        address: the cluster's Jobs API (dashboard) URL.
        env: the jobs' environment variables (their Ray runtime env).
        python: the interpreter on the cluster's nodes, a command name or a path there.
        api_version: the detrforge version jobs must run (:data:`API_VERSION_ENV`).
    """

    def __init__(
        self,
        address: str,
        *,
        env: dict[str, str] | None = None,
        python: str = DEFAULT_JOB_PYTHON,
        api_version: str = __version__,
        agent_wait_s: float = 60.0,
    ) -> None:
        self.address = address
        self.agent_wait_s = agent_wait_s
        self.env = {**(env or {}), API_VERSION_ENV: api_version}
        self.python = python
        self._client: Any = None

    def entrypoint(self, module: str, args: Sequence[str]) -> str:
        """The shell command Ray runs for ``module``: nothing in it names the API's machine."""
        return shlex.join([self.python, "-m", module, *args])

    @property
    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            try:
                self._client = JobSubmissionClient(self.address)
            except Exception as exc:
                raise ClusterError(
                    f"cannot reach the Ray Jobs API at {self.address}: {exc}. Check RAY_ADDRESS "
                    "(the dashboard URL, e.g. http://127.0.0.1:8265) or start `detrforge serve`."
                ) from exc
        return self._client

    def submit(
        self,
        module: str,
        args: Sequence[str],
        *,
        submission_id: str,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Submit ``module`` as a Ray job named ``submission_id``; returns the submission id.

        Idempotent: Ray accepts a submission id once, so when a job with ``submission_id``
        exists already (an API replica submitted it and died before recording it) it is that
        job's id that comes back, and nothing new starts; so too when Ray took the job but its
        answer was lost.
        """
        entrypoint = self.entrypoint(module, args)
        deadline = time.monotonic() + self.agent_wait_s
        while True:
            try:
                return str(
                    self.client.submit_job(
                        entrypoint=entrypoint,
                        submission_id=submission_id,
                        runtime_env={"env_vars": self.env},
                        metadata=metadata or {},
                    )
                )
            except ClusterError:
                raise
            except Exception as exc:
                if f"submission_id {submission_id} already exists" in str(exc):
                    return submission_id
                # A freshly started head answers this until its job agent is up.
                if "No available agent" in str(exc) and time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                if self.has_job(submission_id):
                    return submission_id
                raise ClusterError(f"Ray refused job {submission_id}: {exc}") from exc

    def status(self, submission_id: str) -> JobStatus:
        try:
            info = self.client.get_job_info(submission_id)
        except ClusterError:
            raise
        except RuntimeError as exc:
            if "does not exist" in str(exc):
                raise NotFoundError(f"Ray has no job {submission_id}") from exc
            raise ClusterError(f"cannot read Ray job {submission_id}: {exc}") from exc
        except Exception as exc:
            raise ClusterError(f"cannot read Ray job {submission_id}: {exc}") from exc
        return JobStatus(status=str(info.status), message=info.message)

    def has_job(self, submission_id: str) -> bool:
        """Whether Ray knows the job (False too when Ray cannot be asked)."""
        try:
            self.status(submission_id)
        except (ClusterError, NotFoundError):
            return False
        return True

    def node_resources(self) -> list[dict[str, float]]:
        """The total resources of every alive node, read through the dashboard's state API."""
        from ray.util.state import list_nodes

        try:
            nodes = list_nodes(address=self.address, detail=True, raise_on_missing_output=False)
        except Exception as exc:
            raise ClusterError(f"cannot list the nodes of {self.address}: {exc}") from exc
        return [dict(n.resources_total) for n in nodes if n.state == "ALIVE"]

    def logs(self, submission_id: str) -> str:
        try:
            return str(self.client.get_job_logs(submission_id))
        except Exception as exc:
            raise ClusterError(f"cannot read logs of Ray job {submission_id}: {exc}") from exc

    async def follow_logs(self, submission_id: str) -> AsyncIterator[str]:
        """Stream the job's log lines as Ray produces them, until it ends."""
        async for chunk in self.client.tail_job_logs(submission_id):
            yield str(chunk)

    def stop(self, submission_id: str) -> bool:
        """Ask Ray to stop the job (SIGTERM to the driver, then its workers)."""
        try:
            return bool(self.client.stop_job(submission_id))
        except Exception as exc:
            raise ClusterError(f"cannot stop Ray job {submission_id}: {exc}") from exc
