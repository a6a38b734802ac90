"""Sweeps from request to result: submit, watch trials, read the front, cancel, feed the registry.

A sweep is a job of kind ``sweep`` in the jobs table (the :class:`JobService` submits, reconciles
and cancels it like any job). Trial data lives in MLflow: the sweep's own run (tagged
``detrforge.job_id``) holds ``sweep/result.json`` and ``sweep/pareto.png``; each trial is a
nested run tagged ``detrforge.sweep_job_id`` + ``detrforge.trial_id``. When a sweep SUCCEEDS the
reconciler appends each measured trial's benchmark record to the benchmark history.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from detrforge.control.job_records import measured_fields
from detrforge.control.jobs import JobService
from detrforge.control.versions import VersionSource
from detrforge.detector.specs import parse_spec
from detrforge.detector.sweep_specs import SweepRequest, SweepSpec, ranking_metric
from detrforge.platform.errors import ConflictError, InvalidSpecError, NotFoundError
from detrforge.platform.launcher import require_resources
from detrforge.platform.tags import Tag
from detrforge.registry.entities import ApiKey, Job, JobState

__all__ = ["SweepService", "trial_record_job_id"]

log = logging.getLogger(__name__)

_RECORD_JOB_ID_MAX = 32


def trial_record_job_id(job_id: str, trial_id: str) -> str:
    """The benchmark history's ``job_id`` of one trial's measurement (unique, <= 32 chars)."""
    key = f"{job_id}.{trial_id}"
    if len(key) <= _RECORD_JOB_ID_MAX:
        return key
    import hashlib

    digest = hashlib.sha256(trial_id.encode()).hexdigest()
    return f"{job_id}.{digest[: _RECORD_JOB_ID_MAX - len(job_id) - 1]}"


@dataclass
class SweepService:
    """Sweep-specific views over the :class:`JobService` and MLflow."""

    jobs: JobService

    # -- submit ---------------------------------------------------------------------------
    def submit(self, request: SweepRequest, *, principal: ApiKey) -> Job:
        """Validate the sweep's dataset and target (placeable), then submit it as one job."""
        target = self.jobs.targets.get(request.target)
        if target.precision != "fp32":
            raise InvalidSpecError(
                f"target {target.name!r} measures {target.precision}; sweeps measure fp32 only",
                field="target",
            )
        profile = {
            "target_resources": dict(target.resources),
            "backend": request.backend or target.backend,
            "bench_threads": request.bench_threads or target.num_threads,
        }
        spec = parse_spec(SweepSpec, {**request.model_dump(), **profile})
        weights = spec.base.get("pretrain_weights")
        if weights:
            self.jobs.require_file(str(weights), field="base.pretrain_weights")
        choices = spec.space.get("pretrain_weights")
        for choice in choices if isinstance(choices, list) else []:
            if choice:
                self.jobs.require_file(str(choice), field="space.pretrain_weights")
        # Refused sources answer before the cluster is asked anything; intake checks again.
        self.jobs.sources.check(spec.dataset, field="dataset")
        nodes = self.jobs.launcher.node_resources()
        trial = {"CPU": spec.resources_per_trial.cpu}
        if spec.resources_per_trial.gpu:
            trial["GPU"] = spec.resources_per_trial.gpu
        require_resources(nodes, trial, what="one sweep trial", field="resources_per_trial")
        require_resources(
            nodes,
            {"CPU": float(spec.bench_threads or 1), **spec.target_resources},
            what=f"hardware target {target.name!r}",
            field="target",
        )
        info = self.jobs.intake_dataset(spec.dataset)
        return self.jobs.submit("sweep", spec, principal=principal, dataset=info)

    # -- read -----------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        """The sweep's job row, reconciled; 404 for another kind of job."""
        job = self.jobs.reconcile(job_id)
        if job.kind != "sweep":
            raise NotFoundError(f"job {job_id} is a {job.kind} job, not a sweep")
        return job

    def trials(self, job: Job) -> list[dict[str, Any]]:
        """Every trial so far: state, epochs done, AP (latest and best), measured p95."""
        tracker = self.jobs.tracker
        runs = tracker.client.search_runs(
            [tracker.experiment_id()],
            filter_string=f"tags.`{Tag.SWEEP_JOB_ID}` = '{job.id}'",
            max_results=1000,
        )
        metric = ranking_metric(job.spec)
        out = []
        for run in runs:
            tags, metrics = run.data.tags, run.data.metrics
            state = tags.get(Tag.TRIAL_STATE, "RUNNING")
            if state == "RUNNING" and job.is_terminal:
                # The sweep ended under it (cancelled or failed): nothing runs any more.
                state = "CANCELLED" if job.state == JobState.CANCELLED else "ABORTED"
            out.append(
                {
                    "trial_id": tags.get(Tag.TRIAL_ID),
                    "state": state,
                    "model_size": tags.get(Tag.MODEL_SIZE),
                    "resolution": _int(tags.get(Tag.RESOLUTION)),
                    "params": json.loads(tags.get(Tag.SEARCHED, "{}")),
                    "epochs": int(metrics["epoch"]) + 1 if "epoch" in metrics else 0,
                    "ap": metrics.get(metric),
                    "best_ap": metrics.get(f"best/{metric}"),
                    "p95_ms": metrics.get("latency_ms/p95"),
                    "p50_ms": metrics.get("latency_ms/p50"),
                    "checkpoint_uri": tags.get(Tag.CHECKPOINT_URI),
                    "checkpoint_sha256": tags.get(Tag.CHECKPOINT_SHA256),
                    "mlflow_run_id": run.info.run_id,
                    "error": tags.get(Tag.ERROR) or tags.get(Tag.BENCHMARK_ERROR),
                }
            )
        return sorted(out, key=lambda t: str(t["trial_id"]))

    def result(self, job_id: str) -> dict[str, Any]:
        """The finished sweep's front, best trial and SLA pick (``sweep/result.json``)."""
        job = self._finished(job_id)
        data: dict[str, Any] = json.loads(self._artifact(job, "sweep/result.json"))
        return data

    def plot(self, job_id: str) -> bytes:
        """The finished sweep's Pareto plot (PNG bytes)."""
        return self._artifact(self._finished(job_id), "sweep/pareto.png")

    def cancel(self, job_id: str) -> Job:
        """Stop the sweep: Ray ends the driver, and with it every trial and benchmark task."""
        job = self.jobs.job_store.get(job_id)
        if job.kind != "sweep":
            raise NotFoundError(f"job {job_id} is a {job.kind} job, not a sweep")
        return self.jobs.cancel(job_id)

    # -- for the registry -----------------------------------------------------------------
    def trial_source(self, job_id: str, trial_id: str) -> VersionSource:
        """What registering a trial as a model version needs (its weights and lineage).

        Raises:
            NotFoundError: no such sweep or trial.
            ConflictError: the trial is still training, or saved no weights.
        """
        job = self.get(job_id)
        trial = next((t for t in self.trials(job) if t["trial_id"] == trial_id), None)
        if trial is None:
            raise NotFoundError(f"sweep {job_id} has no trial {trial_id}", field="trial_id")
        if trial["state"] == "RUNNING":
            raise ConflictError(
                f"trial {trial_id} of sweep {job_id} is still training; register it once it ends"
            )
        if not trial["checkpoint_uri"] or not trial["checkpoint_sha256"]:
            raise ConflictError(f"trial {trial_id} of sweep {job_id} saved no weights")
        return VersionSource(
            checkpoint_uri=trial["checkpoint_uri"],
            expected_sha256=trial["checkpoint_sha256"],
            model_size=trial["model_size"],
            resolution=int(trial["resolution"]),
            mlflow_run_id=trial["mlflow_run_id"],
            params=SweepSpec.model_validate(job.spec)
            .trial_spec(trial["params"])
            .model_dump(mode="json"),
            dataset_fingerprint=job.dataset_fingerprint,
            source_job_id=job.id,
            source_trial_id=trial_id,
        )

    # -- reconcile hook -------------------------------------------------------------------
    def record_benchmarks(self, job: Job, run_id: str | None) -> None:
        """Append each measured trial's record to the benchmark history (idempotent)."""
        if self.jobs.benchmarks is None:
            return
        spec = SweepSpec.model_validate(job.spec)
        tracker = self.jobs.tracker
        for trial in self.trials(job):
            if trial["p95_ms"] is None:
                continue
            out = tracker.read_json_artifact(trial["mlflow_run_id"], "benchmark/record.json")
            self.jobs.benchmarks.add(
                {
                    "job_id": trial_record_job_id(job.id, str(trial["trial_id"])),
                    "checkpoint_uri": trial["checkpoint_uri"],
                    "checkpoint_sha256": out["checkpoint_sha256"],
                    "model_size": trial["model_size"],
                    "target": spec.target,
                    "target_resources": spec.target_resources,
                    "node_id": out["node_id"],
                    "backend": spec.backend,
                    "precision": "fp32",
                    "resolution": trial["resolution"],
                    "batch_size": 1,
                    "warmup": spec.bench_warmup,
                    "runs": spec.bench_runs,
                    **measured_fields(out),
                    "mlflow_run_id": trial["mlflow_run_id"],
                    "dataset_fingerprint": out["dataset_fingerprint"],
                }
            )

    # -- helpers --------------------------------------------------------------------------
    def _finished(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.state != JobState.SUCCEEDED or not job.mlflow_run_id:
            raise ConflictError(
                f"sweep {job_id} is {job.state.value}; its result exists once it has SUCCEEDED"
            )
        return job

    def _artifact(self, job: Job, path: str) -> bytes:
        assert job.mlflow_run_id is not None
        return self.jobs.tracker.read_artifact(job.mlflow_run_id, path)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
