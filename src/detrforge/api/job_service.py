"""Fine-tune jobs from request to final state: intake, submit, reconcile, cancel.

Jobs never write the registry. The API learns what happened by reconciling Ray's job status and
the MLflow run tagged with the job id into the job row; it does so in the background, on every
read of one job, and for every non-terminal job when it starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from detrforge.platform.data import DatasetInfo, require_valid_dataset
from detrforge.platform.errors import ClusterError, DetrforgeError, NotFoundError
from detrforge.platform.launcher import Launcher
from detrforge.platform.specs import FinetuneSpec, parse_spec
from detrforge.platform.storage import fetch_local, open_store
from detrforge.platform.tracking import Tracker
from detrforge.registry.entities import ApiKey, Job, JobState
from detrforge.registry.jobs import JobStore

__all__ = ["FINETUNE_MODULE", "JobService"]

log = logging.getLogger(__name__)

FINETUNE_MODULE = "detrforge.jobs.finetune"

_RAY_TO_STATE = {
    "PENDING": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "SUCCEEDED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "STOPPED": JobState.CANCELLED,
}
_PROGRESS_KEYS = {
    "progress/epoch": "epoch",
    "progress/step": "step",
    "progress/total_steps": "total_steps",
    "progress/eta_s": "eta_s",
    "train/loss_step": "loss",
}


@dataclass
class JobService:
    """Owns the life of fine-tune jobs; every collaborator is passed in explicitly."""

    jobs: JobStore
    launcher: Launcher
    tracker: Tracker
    artifact_root: str
    cache_dir: Path
    schedule_timeout_s: float = 600.0

    # -- intake + submit ----------------------------------------------------------------------
    def intake_dataset(self, uri: str) -> DatasetInfo:
        """Bring the dataset here (s3:// is downloaded) and validate it; raises on any problem."""
        local = fetch_local(uri, self.cache_dir / "datasets")
        return require_valid_dataset(Path(local))

    def submit_finetune(self, body: Any, *, principal: ApiKey) -> Job:
        """Validate ``body`` and the dataset, record the job, then submit it to Ray."""
        spec: FinetuneSpec = parse_spec(FinetuneSpec, body)
        if spec.pretrain_weights and not spec.pretrain_weights.startswith("s3://"):
            if not Path(spec.pretrain_weights).is_file():
                raise NotFoundError(
                    f"pretrain_weights {spec.pretrain_weights!r} is not a file on the server; give "
                    "an existing .pth path or an s3:// URI",
                    field="pretrain_weights",
                )
        info = self.intake_dataset(spec.dataset)
        job = self.jobs.create(
            kind="finetune",
            spec=spec.model_dump(mode="json"),
            created_by=principal.principal,
            dataset_fingerprint=info.fingerprint,
        )
        args = ["--job-id", job.id, "--spec", spec.model_dump_json()]
        args += ["--dataset-fingerprint", info.fingerprint]
        try:
            submission_id = self.launcher.submit(
                FINETUNE_MODULE, args, submission_id=job.id, metadata={"detrforge.job_id": job.id}
            )
        except ClusterError as exc:
            self.jobs.update(job.id, state=JobState.FAILED, error=exc.message, finished_at=_now())
            raise
        return self.jobs.update(job.id, ray_submission_id=submission_id)

    # -- cancel ---------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> Job:
        """Ask Ray to stop the job; the reconciler records CANCELLED once Ray reports STOPPED."""
        job = self.jobs.get(job_id)
        if job.is_terminal:
            return job
        job = self.jobs.update(job_id, state=JobState.CANCELLING)
        if job.ray_submission_id:
            self.launcher.stop(job.ray_submission_id)
        return self.reconcile(job_id)

    # -- reconcile ------------------------------------------------------------------------------
    def reconcile(self, job_id: str) -> Job:
        """Bring one job's row up to date with Ray and MLflow; terminal jobs are left alone."""
        job = self.jobs.get(job_id)
        if job.is_terminal or not job.ray_submission_id:
            return job
        try:
            ray_status = self.launcher.status(job.ray_submission_id)
        except NotFoundError:
            return self.jobs.update(
                job_id,
                state=JobState.FAILED,
                error="the Ray cluster has no record of this job (was the cluster restarted?)",
                finished_at=_now(),
            )
        except ClusterError as exc:
            log.warning("cannot reconcile %s: %s", job_id, exc.message)
            return job
        fields: dict[str, Any] = self._tracking_fields(job)
        state = _RAY_TO_STATE.get(ray_status.status, job.state)
        if state == JobState.RUNNING and job.state == JobState.CANCELLING:
            state = JobState.CANCELLING
        if state == JobState.RUNNING and job.started_at is None:
            fields["started_at"] = _now()
        if state == JobState.FAILED:
            fields["error"] = fields.pop("_run_error", None) or ray_status.message or "job failed"
        fields.pop("_run_error", None)
        if state.is_terminal:
            fields["finished_at"] = _now()
        elif state == JobState.RUNNING and self._unschedulable(job, fields):
            self.launcher.stop(job.ray_submission_id)
            state = JobState.FAILED
            fields["error"] = (
                f"no training progress within {self.schedule_timeout_s:.0f} s of starting: the "
                "cluster could not place the workers (resources_per_worker, use_gpu) or is busy"
            )
            fields["finished_at"] = _now()
        return self.jobs.update(job_id, state=state, **fields)

    def reconcile_all(self) -> int:
        """Reconcile every non-terminal job; returns how many were looked at."""
        jobs = self.jobs.list_nonterminal()
        for job in jobs:
            try:
                self.reconcile(job.id)
            except DetrforgeError as exc:  # one bad job must not stop the others
                log.warning("reconcile %s failed: %s", job.id, exc.message)
        return len(jobs)

    def _tracking_fields(self, job: Job) -> dict[str, Any]:
        run_id = job.mlflow_run_id or self.tracker.find_job_run(job.id)
        if run_id is None:
            return {}
        summary = self.tracker.summary(run_id)
        progress = {
            dst: summary.metrics[src]
            for src, dst in _PROGRESS_KEYS.items()
            if src in summary.metrics
        }
        metrics = {
            k: v
            for k, v in summary.metrics.items()
            if not k.startswith(("progress/", "attempt/", "checkpoint/"))
        }
        fields: dict[str, Any] = {"mlflow_run_id": run_id, "progress": progress, "metrics": metrics}
        if "detrforge.model_uri" in summary.tags:
            fields["model_uri"] = summary.tags["detrforge.model_uri"]
            fields["checkpoint_sha256"] = summary.tags.get("detrforge.model_sha256")
        checkpoints = self.checkpoints(job.id)
        if checkpoints:
            fields["checkpoint_uri"] = checkpoints[-1]
        if "detrforge.error" in summary.tags:
            fields["_run_error"] = summary.tags["detrforge.error"]
        return fields

    def _unschedulable(self, job: Job, fields: dict[str, Any]) -> bool:
        started = fields.get("started_at") or job.started_at
        if started is None or fields.get("progress"):
            return False
        return (_now() - started).total_seconds() > self.schedule_timeout_s

    def checkpoints(self, job_id: str) -> list[str]:
        """URIs of the job's resumable Ray Train checkpoints, oldest first."""
        store = open_store(self.artifact_root)
        try:
            uris = store.list(store.uri_for(f"ray/{job_id}"))
        except DetrforgeError:
            return []
        dirs = sorted(
            {u.rsplit("/", 1)[0] for u in uris if "/checkpoint_" in u and u.endswith(".ckpt")}
        )
        return dirs

    # -- logs -----------------------------------------------------------------------------------
    def logs(self, job_id: str, *, tail: int | None = None) -> str:
        job = self.jobs.get(job_id)
        if not job.ray_submission_id:
            return ""
        text = self.launcher.logs(job.ray_submission_id)
        if tail is not None:
            text = "\n".join(text.splitlines()[-tail:])
        return text

    async def follow_logs(self, job_id: str) -> AsyncIterator[str]:
        job = self.jobs.get(job_id)
        if not job.ray_submission_id:
            return
        async for chunk in self.launcher.follow_logs(job.ray_submission_id):
            yield chunk


def _now() -> datetime:
    return datetime.now(UTC)


def wait_for_terminal(service: JobService, job_id: str, *, timeout_s: float) -> Job:
    """Reconcile ``job_id`` until it is terminal or ``timeout_s`` passes (tests, demo)."""
    deadline = time.monotonic() + timeout_s
    job = service.reconcile(job_id)
    while not job.is_terminal and time.monotonic() < deadline:
        time.sleep(1.0)
        job = service.reconcile(job_id)
    return job
