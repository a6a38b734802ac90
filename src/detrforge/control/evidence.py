"""The evidence runner promotions use: evaluate and benchmark jobs on the cluster.

``JobEvidenceRunner`` answers an ``EvidenceNeed`` by reusing an earlier evaluation when one
measured exactly the same thing (the same bytes on the same pinned set), else by submitting the
job; it reads a submitted job back once it ends. Latency is never reused: a ratio gate's
benchmark times the candidate and the production version together, paired in one job, with as
many samples as the policy's p95 needs and more rounds while the interval is inconclusive. The
promotion state machine (``promotion.py``) decides what it needs and what the figures mean.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from detrforge.control.jobs import JobService
from detrforge.control.needs import (
    ClusterBusy,
    EvidenceFailed,
    EvidenceNeed,
    EvidenceResult,
)
from detrforge.detector.sizes import as_model_size
from detrforge.detector.specs import (
    BenchmarkRequest,
    EvaluateRequest,
    PairedBaseline,
    VariantArtifact,
)
from detrforge.platform.errors import ClusterError, DetrforgeError, NotFoundError
from detrforge.platform.limits import MAX_PAGE_SIZE
from detrforge.registry.benchmarks import BenchmarkStore
from detrforge.registry.entities import (
    BenchmarkRecord,
    Job,
    JobState,
    ModelVersion,
    SystemPrincipal,
)
from detrforge.registry.gates import AP_METRIC, MASK_AP_METRIC, GatePolicy
from detrforge.registry.variants import VariantStore

__all__ = ["JobEvidenceRunner"]


@dataclass
class JobEvidenceRunner:
    """Evidence from evaluate/benchmark jobs (``EvidenceRunner`` for ``PromotionService``)."""

    jobs: JobService
    benchmarks: BenchmarkStore
    # The versions' built variants: what a target ships when the policy names one.
    variants: VariantStore

    def start(
        self,
        need: EvidenceNeed,
        version: ModelVersion,
        *,
        policy: GatePolicy,
        promotion_id: str,
        job_id: str,
        baseline: ModelVersion | None,
    ) -> EvidenceResult:
        """Reuse a result that already answers ``need``, or submit the job that will as
        ``job_id`` (adopting the job if it was submitted already, by a replica that died)."""
        actor = SystemPrincipal(f"promotion:{promotion_id}")
        shipped = policy.target(need.target).variant if need.target else None
        # The candidate must have what the policy ships; production is measured as it has it
        # (its checkpoint when it was promoted before the policy named a variant).
        variant = self._variant(version, shipped, need, required=need.role == "candidate")
        artifact = _artifact(variant)
        baseline_variant: VariantArtifact | None = None  # a paired benchmark's other arm
        try:
            if need.kind == "evaluate":
                if policy.eval is None:
                    raise EvidenceFailed("the policy needs AP but pins no eval set")
                reused = self._reusable_evaluation(version, policy, variant)
                if reused is not None:
                    return _ap_result(need, version.version, reused, reused=True, artifact=artifact)
                evaluation = EvaluateRequest(
                    checkpoint=version.checkpoint_uri,
                    checkpoint_sha256=version.checkpoint_sha256,
                    model_size=as_model_size(version.model_size),
                    resolution=version.resolution,
                    dataset=policy.eval.dataset,
                    split=policy.eval.split,
                    backend=policy.eval.backend,
                )
                job = self.jobs.submit_evaluation(
                    evaluation, principal=actor, job_id=job_id, variant=variant
                )
            else:
                assert need.target is not None
                gate = policy.target(need.target)
                paired = baseline is not None and gate.max_p95_ratio is not None
                baseline_variant = (
                    self._variant(baseline, shipped, need, required=False)
                    if paired and baseline is not None
                    else None
                )
                benchmark = BenchmarkRequest(
                    checkpoint=version.checkpoint_uri,
                    checkpoint_sha256=version.checkpoint_sha256,
                    model_size=as_model_size(version.model_size),
                    resolution=version.resolution,
                    target=need.target,
                    runs=policy.runs_per_round,
                    warmup=policy.benchmark_warmup,
                    model_name=version.model_name,
                    model_version=version.version,
                    baseline=_arm(baseline) if paired and baseline else None,
                    max_ratio=gate.max_p95_ratio if paired else None,
                    confidence=policy.latency_confidence,
                    max_rounds=policy.latency_max_rounds if paired else 1,
                )
                job = self.jobs.submit_benchmark(
                    benchmark,
                    principal=actor,
                    job_id=job_id,
                    variant=variant,
                    baseline_variant=baseline_variant,
                )
        except ClusterError as exc:
            raise ClusterBusy(exc.message) from None
        except DetrforgeError as exc:
            raise EvidenceFailed(
                f"could not start the {need.describe(version.version)}: {exc.message}"
            ) from None
        return EvidenceResult(
            need=need,
            version=version.version,
            state="submitted",
            job_id=job.id,
            artifact=artifact,
            baseline_artifact=_artifact(baseline_variant),
        )

    def _variant(
        self, version: ModelVersion, name: str | None, need: EvidenceNeed, *, required: bool
    ) -> VariantArtifact | None:
        """The newest stored ``name`` variant of ``version`` (None for no name); a candidate
        without it cannot be gated on it, production is then measured on its checkpoint."""
        if name is None:
            return None
        try:
            stored = self.variants.current_variant(version.model_name, version.version, name)
        except NotFoundError:
            if not required:
                return None
            raise EvidenceFailed(
                f"v{version.version} has no {name} variant, which the policy ships on "
                f"{need.target}; build it with `detrforge optimize {version.model_name} "
                f"{version.version} --target {need.target}`, then promote again"
            ) from None
        return VariantArtifact(
            name=stored.name,
            uri=stored.artifact_uri,
            model_file=stored.model_file,
            sha256=stored.sha256,
        )

    def read(self, result: EvidenceResult, *, policy: GatePolicy) -> EvidenceResult:
        """Reconcile the result's job: still running, or done with its figure."""
        if result.done or result.job_id is None:
            return result
        job = self.jobs.reconcile(result.job_id)
        if job.state == JobState.SUCCEEDED:
            if result.need.kind == "evaluate":
                pinned = policy.eval.fingerprint if policy.eval else None
                if job.dataset_fingerprint != pinned:
                    raise EvidenceFailed(
                        f"the eval set changed since the policy was set (fingerprint "
                        f"{job.dataset_fingerprint}, pinned {pinned}); set the policy again "
                        "to accept the new set"
                    )
                done = _ap_result(result.need, result.version, job, reused=result.reused)
            else:
                record = self.benchmarks.get_by_job(job.id)
                if record is None:
                    raise EvidenceFailed(f"benchmark job {job.id} left no record")
                done = _p95_result(result.need, result.version, record, reused=result.reused)
            return replace(
                done, artifact=result.artifact, baseline_artifact=result.baseline_artifact
            )
        if job.is_terminal:
            raise EvidenceFailed(
                f"the {result.need.kind} job {job.id} of v{result.version} ({result.need.role}) "
                f"ended {job.state.value}: {job.error or 'no error recorded'}"
            )
        return replace(result, state=job.state.value.lower(), job_id=job.id)

    def _reusable_evaluation(
        self, version: ModelVersion, policy: GatePolicy, variant: VariantArtifact | None
    ) -> Job | None:
        """A finished evaluation of the same bytes (checkpoint, and variant if any), size and
        resolution on the same pinned set."""
        assert policy.eval is not None
        for job in self._succeeded("evaluate"):
            spec: dict[str, Any] = job.spec
            measured = (spec.get("variant") or {}).get("sha256")
            if (
                spec.get("checkpoint_sha256") == version.checkpoint_sha256
                and measured == (variant.sha256 if variant else None)
                # The same bytes at another resolution are another model: their AP differs.
                and spec.get("resolution") == version.resolution
                and spec.get("model_size") == version.model_size
                and spec.get("dataset") == policy.eval.dataset
                and spec.get("split") == policy.eval.split
                and spec.get("backend") == policy.eval.backend
                and job.dataset_fingerprint == policy.eval.fingerprint
                and AP_METRIC in job.metrics
                and (MASK_AP_METRIC in job.metrics or not policy.needs_mask_ap)
            ):
                return job
        return None

    def _succeeded(self, kind: str) -> Iterator[Job]:
        """Every SUCCEEDED job of ``kind``, newest first, a page at a time."""
        offset = 0
        while True:
            page, total = self.jobs.job_store.list(
                kind=kind, state=JobState.SUCCEEDED, limit=MAX_PAGE_SIZE, offset=offset
            )
            yield from page
            offset += len(page)
            if not page or offset >= total:
                return


def _artifact(variant: VariantArtifact | None) -> dict[str, str] | None:
    """What the evidence cites of a measured variant."""
    return None if variant is None else {"variant": variant.name, "sha256": variant.sha256}


def _ap_result(
    need: EvidenceNeed,
    version: int,
    job: Job,
    *,
    reused: bool,
    artifact: dict[str, str] | None = None,
) -> EvidenceResult:
    return EvidenceResult(
        artifact=artifact,
        need=need,
        version=version,
        state="done",
        job_id=job.id,
        ap=float(job.metrics[AP_METRIC]),
        mask_ap=float(job.metrics[MASK_AP_METRIC]) if MASK_AP_METRIC in job.metrics else None,
        mlflow_run_id=job.mlflow_run_id,
        reused=reused,
    )


def _p95_result(
    need: EvidenceNeed, version: int, record: BenchmarkRecord, *, reused: bool
) -> EvidenceResult:
    return EvidenceResult(
        need=need,
        version=version,
        state="done",
        job_id=record.job_id,
        record_id=record.id,
        p95_ms=record.p95_ms,
        mlflow_run_id=record.mlflow_run_id,
        node_id=record.node_id,
        reused=reused,
        paired=_summary(record),
    )


def _arm(version: ModelVersion) -> PairedBaseline:
    return PairedBaseline(
        checkpoint=version.checkpoint_uri,
        checkpoint_sha256=version.checkpoint_sha256,
        model_size=as_model_size(version.model_size),
        resolution=version.resolution,
        model_version=version.version,
    )


def _summary(record: BenchmarkRecord) -> dict[str, Any] | None:
    """A paired record's figures without its raw samples (those stay in the history), with the
    node's load while it measured."""
    if record.paired is None:
        return None
    summary = {key: value for key, value in record.paired.items() if key != "samples"}
    return {**summary, "node_load": record.node_load}
