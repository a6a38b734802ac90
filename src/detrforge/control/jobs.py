"""Fine-tune jobs from request to final state: intake, submit, reconcile, cancel.

Jobs never write the registry. Every API replica reconciles Ray's job status and the job's MLflow
run into the job row (each write applies only if the row is still as it read it): in the
background, on every read of one job, and for every non-terminal job when it starts.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from detrforge.control.intake import Intake
from detrforge.control.job_records import benchmark_row, tracking_fields
from detrforge.detector.data import DatasetInfo
from detrforge.detector.optimize_specs import OptimizeSpec
from detrforge.detector.specs import (
    BenchmarkRequest,
    BenchmarkSpec,
    CheckpointChoice,
    EvaluateRequest,
    EvaluateSpec,
    FinetuneSpec,
    VariantArtifact,
    parse_spec,
)
from detrforge.platform.blobs import blob_sha256
from detrforge.platform.errors import (
    ClusterError,
    ConflictError,
    DetrforgeError,
    InvalidSpecError,
    NotFoundError,
)
from detrforge.platform.launcher import Launcher, require_capacity, require_resources
from detrforge.platform.limits import DEFAULT_MAX_ANNOTATION_BYTES
from detrforge.platform.scratch import Housekeeping
from detrforge.platform.sources import SourcePolicy
from detrforge.platform.storage import open_store
from detrforge.platform.tags import Tag
from detrforge.platform.tracking import Tracker
from detrforge.registry.benchmarks import BenchmarkStore
from detrforge.registry.entities import Job, JobState, Principal
from detrforge.registry.jobs import JobStore
from detrforge.registry.targets import TargetStore

__all__ = ["FINETUNE_MODULE", "JobKind", "JobService"]

log = logging.getLogger(__name__)


class JobKind(StrEnum):
    """The kinds of job the platform runs on the cluster, one entry module each (``MODULES``)."""

    finetune = "finetune"
    evaluate = "evaluate"
    benchmark = "benchmark"
    sweep = "sweep"
    optimize = "optimize"


FINETUNE_MODULE = "detrforge.jobs.finetune"
MODULES = {
    JobKind.finetune: FINETUNE_MODULE,
    JobKind.evaluate: "detrforge.jobs.evaluate",
    JobKind.benchmark: "detrforge.jobs.benchmark",
    JobKind.sweep: "detrforge.jobs.sweep",
    JobKind.optimize: "detrforge.jobs.optimize",
}

# Request fields that name the weights; JobService.weights turns them into a spec's fields.
_CHOICE_FIELDS = set(CheckpointChoice.model_fields)
_RAY_TO_STATE = {
    "PENDING": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "SUCCEEDED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "STOPPED": JobState.CANCELLED,
}


@dataclass
class JobService:
    """Owns the life of fine-tune jobs; every collaborator is passed in explicitly."""

    job_store: JobStore
    launcher: Launcher
    tracker: Tracker
    artifact_root: str
    cache_dir: Path
    # Which paths and URIs callers may name (datasets, checkpoints, weights).
    sources: SourcePolicy
    targets: TargetStore
    benchmarks: BenchmarkStore
    schedule_timeout_s: float = 600.0
    max_annotation_bytes: int = DEFAULT_MAX_ANNOTATION_BYTES
    # kind -> called once a job of that kind SUCCEEDS, before the row turns terminal (so a
    # failing hook is retried on the next reconcile); must be idempotent. See on_succeeded.
    succeeded_hooks: dict[str, Callable[[Job, str | None], None]] = field(default_factory=dict)
    # Removes finished jobs' scratch folders and prunes the download cache, from reconcile_all.
    housekeeping: Housekeeping | None = None

    # Admits what requests name, and names datasets as the cluster reaches them (``intake.py``).
    intake: Intake = field(init=False)

    def __post_init__(self) -> None:
        self.intake = Intake(
            sources=self.sources,
            artifact_root=self.artifact_root,
            cache_dir=self.cache_dir / "datasets",
            max_annotation_bytes=self.max_annotation_bytes,
        )
        self.on_succeeded("benchmark", self.record_benchmark)

    def on_succeeded(self, kind: str, hook: Callable[[Job, str | None], None]) -> None:
        """Call ``hook(job, mlflow_run_id)`` when a job of ``kind`` succeeds (idempotent hooks)."""
        self.succeeded_hooks[kind] = hook

    # -- intake + submit ----------------------------------------------------------------------
    def intake_dataset(
        self, uri: str, *, field: str = "dataset", require_masks: bool = False
    ) -> DatasetInfo:
        """The validated dataset at ``uri`` (see :meth:`Intake.dataset`)."""
        return self.intake.dataset(uri, field=field, require_masks=require_masks)

    def require_file(self, uri: str, *, field: str) -> str:
        """The canonical form of the existing file ``uri`` (see :meth:`Intake.file`)."""
        return self.intake.file(uri, field=field)

    def submit_finetune(self, spec: FinetuneSpec, *, principal: Principal) -> Job:
        """Check the weights, capacity and dataset, record the job, then submit it to Ray."""
        if spec.pretrain_weights:
            self.require_file(spec.pretrain_weights, field="pretrain_weights")
        self._check_capacity(spec)
        info = self.intake_dataset(spec.dataset, require_masks=spec.segmentation)
        return self.submit("finetune", spec, principal=principal, dataset=info)

    def _check_capacity(self, spec: FinetuneSpec) -> None:
        """Refuse a fine-tune whose workers cannot all be placed on the cluster now."""
        per_worker = dict(spec.resources_per_worker)
        if spec.use_gpu:
            per_worker.setdefault("GPU", 1.0)
        try:
            nodes = self.launcher.node_resources()
        except ClusterError:
            # Capacity is unknown; the submission reports the unreachable cluster itself.
            return
        require_capacity(nodes, per_worker, spec.num_workers)

    def submit(
        self,
        kind: str,
        spec: Any,
        *,
        principal: Principal,
        dataset: DatasetInfo | None,
        job_id: str = "",
    ) -> Job:
        """Record the job, then submit it, once under a ``job_id`` the caller recorded first.

        ``dataset``: ``spec.dataset`` validated. The job row keeps the spec as asked; the job is
        sent it with its dataset and files where the cluster reaches them (staged first,
        ``intake.py``).
        """
        sent = self.intake.spec_for_cluster(spec, dataset)
        fingerprint = dataset.fingerprint if dataset is not None else None
        job = self.job_store.create(
            kind=kind,
            spec=spec.model_dump(mode="json"),
            created_by=principal.principal,
            dataset_fingerprint=fingerprint,
            job_id=job_id or None,
        )
        if job.ray_submission_id or job.is_terminal:
            return job  # under a job_id on record: submitted already, or refused for good
        args = ["--job-id", job.id, "--spec", sent.model_dump_json()]
        args += ["--dataset-fingerprint", fingerprint or ""]
        try:
            submission_id = self.launcher.submit(
                MODULES[JobKind(kind)], args, submission_id=job.id, metadata={Tag.JOB_ID: job.id}
            )
        except ClusterError as exc:
            # Kept for the record, but never mistakable for a run that started and failed.
            self.job_store.update(
                job.id,
                state=JobState.FAILED,
                error=f"never started: the Ray cluster was unreachable or refused the job "
                f"({exc.message})",
                finished_at=_now(),
            )
            raise
        return self.job_store.update(job.id, ray_submission_id=submission_id)

    # -- evaluate + benchmark -------------------------------------------------------------------
    def finished_finetune(self, job_id: str, *, instead: str | None = None) -> Job:
        """A SUCCEEDED fine-tune job with a model (its weights are what the caller uses); any
        other job is a 422 on ``job_id``, suggesting ``instead`` when the caller has an
        alternative."""
        job = self.job_store.get(job_id)
        if job.kind != "finetune" or job.state != JobState.SUCCEEDED or not job.model_uri:
            alternative = f" or {instead}" if instead else ""
            raise InvalidSpecError(
                f"job {job.id} is a {job.state.value} {job.kind} job without a model; give a "
                f"SUCCEEDED fine-tune job{alternative}",
                field="job_id",
            )
        return job

    def weights(self, choice: CheckpointChoice) -> dict[str, Any]:
        """The checkpoint fields of a spec for ``choice``: its URI, or a finished fine-tune's
        model (with that job's size and resolution unless the request gives its own)."""
        if choice.job_id is not None:
            job = self.finished_finetune(choice.job_id, instead="a checkpoint URI")
            assert job.model_uri is not None
            uri, sha256 = job.model_uri, choice.checkpoint_sha256 or job.model_sha256
            size = choice.model_size or job.spec.get("model_size", "nano")
            resolution = choice.resolution or job.spec.get("resolution")
        else:
            assert choice.checkpoint is not None
            uri, size, resolution = choice.checkpoint, choice.model_size, choice.resolution
            # A registered version's bytes: the job re-verifies them against their name.
            sha256 = choice.checkpoint_sha256 or blob_sha256(uri)
        fields: dict[str, Any] = {"checkpoint": uri, "checkpoint_sha256": sha256}
        if size is not None:
            fields["model_size"] = size
        if resolution is not None:
            fields["resolution"] = resolution
        return fields

    def submit_evaluation(
        self,
        request: EvaluateRequest,
        *,
        principal: Principal,
        job_id: str = "",
        variant: VariantArtifact | None = None,
    ) -> Job:
        """COCO AP of a checkpoint (or a fine-tune job's model) on a dataset split; of its
        stored ``variant`` instead when the caller (a promotion's gate) names one."""
        options = request.model_dump(exclude=_CHOICE_FIELDS)
        spec = parse_spec(
            EvaluateSpec, {**options, **self.weights(request), **_variants(variant=variant)}
        )
        self._check_checkpoint(spec.checkpoint, spec.checkpoint_sha256)
        # A segmentation model is scored on masks too: the split needs one on every object.
        info = self.intake_dataset(spec.dataset, require_masks=spec.task == "segmentation")
        return self.submit("evaluate", spec, principal=principal, dataset=info, job_id=job_id)

    def submit_benchmark(
        self,
        request: BenchmarkRequest,
        *,
        principal: Principal,
        job_id: str = "",
        variant: VariantArtifact | None = None,
        baseline_variant: VariantArtifact | None = None,
    ) -> Job:
        """Latency of a checkpoint on a named target; refused at once if no node has it. The
        caller (a promotion's gate) may name stored variants to time instead of the checkpoint
        and of the baseline's."""
        target = self.targets.get(request.target)
        profile = {
            "backend": target.backend,
            "precision": target.precision,
            "batch_size": target.batch_size,
            "num_threads": target.num_threads,
        }
        options = request.model_dump(exclude=_CHOICE_FIELDS)
        # What the request leaves out (None) comes from the target's profile.
        options.update({k: v for k, v in profile.items() if options[k] is None})
        spec = parse_spec(
            BenchmarkSpec,
            {
                **options,
                **self.weights(request),
                "target_resources": dict(target.resources),
                **_variants(variant=variant, baseline_variant=baseline_variant),
            },
        )
        if spec.precision != "fp32":
            raise InvalidSpecError(
                f"precision {spec.precision} is not measured yet; use fp32", field="precision"
            )
        self._check_checkpoint(spec.checkpoint, spec.checkpoint_sha256)
        if spec.baseline is not None:
            arm = spec.baseline
            self._check_checkpoint(arm.checkpoint, arm.checkpoint_sha256, at="baseline.")
        if spec.dataset:  # refused sources answer before the cluster is asked anything
            self.sources.check(spec.dataset, field="dataset")
        self._require_target(spec)
        dataset = self.intake_dataset(spec.dataset) if spec.dataset else None
        return self.submit("benchmark", spec, principal=principal, dataset=dataset, job_id=job_id)

    def submit_optimize(self, spec: OptimizeSpec, *, principal: Principal) -> Job:
        """Build and measure variants on the spec's target; refused at once if no node has it."""
        self._check_checkpoint(spec.checkpoint, spec.checkpoint_sha256)
        self.sources.check(spec.dataset, field="dataset")
        self._require_target(spec)
        dataset = self.intake_dataset(spec.dataset)
        return self.submit("optimize", spec, principal=principal, dataset=dataset)

    def _require_target(self, spec: BenchmarkSpec | OptimizeSpec) -> None:
        """Refuse a job on a hardware target no alive node offers (Ray would wait forever)."""
        require_resources(
            self.launcher.node_resources(),
            {"CPU": float(spec.num_threads or 1), **spec.target_resources},
            what=f"hardware target {spec.target!r}",
            field="target",
        )

    def _check_checkpoint(self, uri: str, sha256: str | None, *, at: str = "") -> None:
        self.require_file(uri, field=f"{at}checkpoint")
        registered = blob_sha256(uri)
        if registered is not None and sha256 not in (None, registered):
            raise InvalidSpecError(
                f"{at}checkpoint_sha256: it differs from the sha256 of the registered checkpoint "
                f"named by {at}checkpoint; leave it out to use the registered bytes",
                field=f"{at}checkpoint_sha256",
            )

    # -- cancel ---------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> Job:
        """Ask Ray to stop the job; the reconciler records CANCELLED once Ray reports STOPPED."""
        job = self.job_store.get(job_id)
        if job.is_terminal:
            return job
        job = self.job_store.update(job_id, state=JobState.CANCELLING)
        if job.ray_submission_id:
            self.launcher.stop(job.ray_submission_id)
        return self.reconcile(job_id)

    # -- reconcile ------------------------------------------------------------------------------
    def reconcile(self, job_id: str) -> Job:
        """Bring one job's row up to date with Ray and MLflow; terminal jobs are left alone."""
        job = self.job_store.get(job_id)
        if job.is_terminal or not job.ray_submission_id:
            return job
        try:
            ray_status = self.launcher.status(job.ray_submission_id)
        except NotFoundError:
            return self.job_store.update(
                job_id,
                expected_state=job.state,
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
        if state == JobState.SUCCEEDED and job.kind in self.succeeded_hooks:
            self.succeeded_hooks[job.kind](job, fields.get("mlflow_run_id"))
        elif state == JobState.RUNNING and self._unschedulable(job, fields):
            self.launcher.stop(job.ray_submission_id)
            state = JobState.FAILED
            fields["error"] = (
                f"no training progress within {self.schedule_timeout_s:.0f} s of starting: the "
                "cluster could not place the workers (resources_per_worker, use_gpu) or is busy"
            )
            fields["finished_at"] = _now()
        return self.job_store.update(job_id, expected_state=job.state, state=state, **fields)

    def record_benchmark(self, job: Job, run_id: str | None) -> None:
        """Append the benchmark's result to the history (idempotent per job)."""
        if run_id is not None:
            out = self.tracker.read_json_artifact(run_id, "benchmark/record.json")
            self.benchmarks.add(benchmark_row(job, run_id, out))

    def reconcile_all(self) -> int:
        """Reconcile every non-terminal job; returns how many were looked at."""
        jobs = self.job_store.list_nonterminal()
        for job in jobs:
            try:
                self.reconcile(job.id)
            except DetrforgeError as exc:  # one bad job must not stop the others
                log.warning("reconcile %s failed: %s", job.id, exc.message)
        if self.housekeeping is not None:
            try:
                self.housekeeping.run(self.is_terminal)
            except OSError as exc:  # a full or read-only disk must not stop reconciling
                log.warning("housekeeping failed: %s", exc)
        return len(jobs)

    def is_terminal(self, job_id: str) -> bool | None:
        """Whether ``job_id`` is terminal; None when no such job is recorded."""
        try:
            return self.job_store.get(job_id).is_terminal
        except NotFoundError:
            return None

    def _tracking_fields(self, job: Job) -> dict[str, Any]:
        run_id = job.mlflow_run_id or self.tracker.find_job_run(job.id)
        if run_id is None:
            return {}
        return tracking_fields(self.tracker.summary(run_id), self.checkpoints(job.id))

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
        return sorted(
            {u.rsplit("/", 1)[0] for u in uris if "/checkpoint_" in u and u.endswith(".ckpt")}
        )

    def evaluation_result(self, job_id: str) -> dict[str, Any]:
        """The finished evaluation's stats and per-class table (from its MLflow run)."""
        job = self.reconcile(job_id)
        if job.kind != "evaluate":
            raise NotFoundError(f"job {job_id} is not an evaluation")
        if job.state != JobState.SUCCEEDED or not job.mlflow_run_id:
            raise ConflictError(f"evaluation {job_id} is {job.state.value}; its result comes later")
        result: dict[str, Any] = self.tracker.read_json_artifact(
            job.mlflow_run_id, "eval/per_class.json"
        )
        result["eval_fingerprint"] = self.tracker.summary(job.mlflow_run_id).tags.get(
            Tag.EVAL_FINGERPRINT
        )
        if "segm/AP" in job.metrics:
            # A segmentation model's mask AP, from the same predictions, with its own table.
            result["segm"] = self.tracker.read_json_artifact(
                job.mlflow_run_id, "eval/per_class_segm.json"
            )
        return result

    # -- logs -----------------------------------------------------------------------------------
    def logs(self, job_id: str, *, tail: int | None = None) -> str:
        job = self.job_store.get(job_id)
        if not job.ray_submission_id:
            return ""
        text = self.launcher.logs(job.ray_submission_id)
        if tail is not None:
            text = "\n".join(text.splitlines()[-tail:])
        return text

    async def follow_logs(self, job_id: str) -> AsyncIterator[str]:
        job = self.job_store.get(job_id)
        if not job.ray_submission_id:
            return
        async for chunk in self.launcher.follow_logs(job.ray_submission_id):
            yield chunk


def _variants(**variants: VariantArtifact | None) -> dict[str, Any]:
    """Spec fields for the variants a caller names (none when it names none)."""
    return {key: value.model_dump() for key, value in variants.items() if value is not None}


def _now() -> datetime:
    return datetime.now(UTC)
