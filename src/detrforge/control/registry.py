"""The registry as users drive it: register versions, set gate policies, run gated promotions,
roll back, and mirror stages to MLflow aliases.

A promotion is a small persisted state machine the API advances in the background (and on every
read): ``pending`` (checkpoint re-verified) -> ``running`` (evaluate + benchmark jobs submitted or
earlier results reused, their ids kept on the promotion) -> one transaction that records the gate
results and, if every gate passed, changes the stages. Everything it needs to resume is in the
database, so an API restarted mid-promotion picks it up where it stopped.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detrforge.control.jobs import JobService
from detrforge.detector.specs import MODEL_SIZES, check_resolution, parse_spec
from detrforge.platform.blobs import sha256_file
from detrforge.platform.checkpoints import staged_checkpoint
from detrforge.platform.errors import (
    ClusterError,
    DetrforgeError,
    IntegrityError,
    InvalidSpecError,
    NotFoundError,
    PermissionDeniedError,
)
from detrforge.platform.limits import MAX_PAGE_SIZE, parse_reason
from detrforge.platform.sources import SourcePolicy
from detrforge.platform.storage import open_store
from detrforge.platform.tags import Tag
from detrforge.platform.tracking import Tracker
from detrforge.registry.benchmarks import BenchmarkStore
from detrforge.registry.entities import (
    ACTIVE_PROMOTION_STATES,
    ApiKey,
    BenchmarkRecord,
    GateResult,
    Job,
    JobState,
    ModelVersion,
    Principal,
    Promotion,
    PromotionState,
    RegisteredModel,
    Role,
    Stage,
    SystemPrincipal,
)
from detrforge.registry.gates import AP_METRIC, Evidence, GatePolicy, check_gates
from detrforge.registry.models import ModelRegistry

__all__ = ["ENV_PIN_KEYS", "RegistryService"]

log = logging.getLogger(__name__)

# A baseline latency is reused only when it was measured under the same pins as the candidate's.
ENV_PIN_KEYS = (
    "detrforge",
    "rfdetr",
    "torch",
    "torchvision",
    "onnxruntime",
    "python",
    "cpu_model",
    "gpu_name",
    "driver",
    "cuda",
    "cudnn",
)
FAILPOINT_EXIT_CODE = 86


@dataclass
class RegistryService:
    """Owns registry workflows; the store holds the state, the job service runs the evidence."""

    registry: ModelRegistry
    jobs: JobService
    benchmarks: BenchmarkStore
    tracker: Tracker
    cache_dir: Path
    # Which paths and URIs callers may register checkpoints from.
    sources: SourcePolicy
    max_checkpoint_bytes: int = 2 * 1024**3
    checkpoint_load_timeout_s: float = 120.0
    failpoints: frozenset[str] = frozenset()
    wake: threading.Event = field(default_factory=threading.Event)
    _mlflow_lock: threading.Lock = field(default_factory=threading.Lock)
    _advance_lock: threading.Lock = field(default_factory=threading.Lock)

    # -- models and policies -------------------------------------------------------------------
    def create_model(
        self, name: str, *, description: str, principal: Principal, request_id: str | None
    ) -> RegisteredModel:
        model = self.registry.create_model(
            name, description=description, actor=principal.principal, request_id=request_id
        )
        self.sync_mlflow(name)
        return model

    def set_policy(
        self, name: str, body: Any, *, principal: Principal, request_id: str | None
    ) -> RegisteredModel:
        """Validate and store a gate policy; the eval set is checked and its fingerprint pinned."""
        self.registry.get_model(name)
        if not isinstance(body, dict):
            raise InvalidSpecError("the policy must be a JSON object", field=None)
        reason = parse_reason(body.pop("reason", None))
        policy: GatePolicy = parse_spec(GatePolicy, body)
        for gate in policy.targets:
            if self.jobs.targets is not None:
                try:
                    self.jobs.targets.get(gate.target)
                except NotFoundError:
                    raise InvalidSpecError(
                        f"targets: hardware target {gate.target!r} does not exist; create it with "
                        "`detrforge bench targets create` first",
                        field="targets",
                    ) from None
        if policy.eval is not None:
            info = self.jobs.intake_dataset(policy.eval.dataset, field="eval.dataset")
            pinned = policy.eval.model_copy(update={"fingerprint": info.fingerprint})
            policy = policy.model_copy(update={"eval": pinned})
        return self.registry.set_policy(
            name,
            policy.model_dump(mode="json"),
            actor=principal.principal,
            reason=reason,
            request_id=request_id,
        )

    # -- versions ------------------------------------------------------------------------------
    def register_version(
        self, name: str, body: Any, *, principal: Principal, request_id: str | None
    ) -> ModelVersion:
        """Register a finished fine-tune job's model (``job_id``) or a checkpoint URI.

        The checkpoint must be an RF-DETR checkpoint under a data root (or in an allowed bucket);
        its sha256 is computed from the bytes and must equal the one the job recorded (or the one
        given): a mismatch is refused as "checkpoint changed or corrupt".
        """
        self.registry.get_model(name)
        if not isinstance(body, dict):
            raise InvalidSpecError("the body must be a JSON object", field=None)
        return self.register_source(
            name, self._version_fields(body), principal=principal, request_id=request_id
        )

    def register_trial(
        self,
        name: str,
        source: dict[str, Any],
        *,
        description: str,
        principal: Principal,
        request_id: str | None,
    ) -> ModelVersion:
        """Register a sweep trial's weights (``SweepService.trial_source``) with its lineage."""
        self.registry.get_model(name)
        fields = {
            "checkpoint_uri": source["checkpoint_uri"],
            "expected_sha256": source["checkpoint_sha256"],
            "model_size": source["model_size"],
            "resolution": int(source["resolution"]),
            "dataset_fingerprint": source.get("dataset_fingerprint"),
            "params": dict(source.get("params") or {}),
            "source_job_id": source["sweep_job_id"],
            "source_trial_id": source["trial_id"],
            "mlflow_run_id": source.get("mlflow_run_id"),
            "description": description,
        }
        return self.register_source(name, fields, principal=principal, request_id=request_id)

    def register_source(
        self,
        name: str,
        fields: dict[str, Any],
        *,
        principal: Principal,
        request_id: str | None,
    ) -> ModelVersion:
        """Register a version from resolved lineage ``fields`` (a job's, a sweep trial's, ...).

        ``fields`` holds ``checkpoint_uri`` and may hold ``expected_sha256``. The checkpoint is
        copied into the artifact store under its sha256 (``blobs/sha256/<hex>``), and the
        version points at that copy: replacing the original file later changes nothing.
        """
        fields = dict(fields)
        source_uri = fields.pop("checkpoint_uri")
        source = self.sources.check(source_uri, field="checkpoint")
        expected = fields.pop("expected_sha256", None)
        with staged_checkpoint(
            source,
            self.cache_dir / "staging",
            max_bytes=self.max_checkpoint_bytes,
            timeout_s=self.checkpoint_load_timeout_s,
            field="checkpoint",
        ) as staged:
            if expected is not None and expected != staged.sha256:
                # The real sha256 is not printed: only registered bytes have a public hash.
                raise IntegrityError(
                    f"checkpoint changed or corrupt: the sha256 of {source_uri} differs from the "
                    f"expected {expected}; check the file, or register it without "
                    "checkpoint_sha256",
                    field="checkpoint_sha256",
                )
            blob = open_store(self.jobs.artifact_root).put_blob(staged.path, staged.sha256)
        if not fields.get("class_names"):
            fields["class_names"] = staged.class_names
        version = self.registry.register_version(
            name,
            checkpoint_uri=blob.uri,
            checkpoint_sha256=blob.sha256,
            checkpoint_bytes=blob.size,
            source_uri=source_uri,
            actor=principal.principal,
            request_id=request_id,
            **fields,
        )
        self.sync_mlflow(name)
        return self.registry.get_version(name, version.version)

    def _version_fields(self, body: dict[str, Any]) -> dict[str, Any]:
        allowed = {
            "job_id",
            "checkpoint",
            "checkpoint_sha256",
            "model_size",
            "resolution",
            "class_names",
            "description",
        }
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise InvalidSpecError(
                f"unknown field {unknown[0]!r}; give job_id (a SUCCEEDED fine-tune job) or "
                "checkpoint + model_size + resolution",
                field=unknown[0],
            )
        description = str(body.get("description") or "")
        if body.get("job_id"):
            job = self.jobs.job_store.get(str(body["job_id"]))
            if job.kind != "finetune" or job.state != JobState.SUCCEEDED or not job.model_uri:
                raise InvalidSpecError(
                    f"job {job.id} is a {job.state.value} {job.kind} job without a model; give a "
                    "SUCCEEDED fine-tune job",
                    field="job_id",
                )
            return {
                "checkpoint_uri": job.model_uri,
                "expected_sha256": job.model_sha256,
                "model_size": job.spec.get("model_size", "nano"),
                "resolution": int(job.spec["resolution"]),
                "class_names": list(body.get("class_names") or []),
                "dataset_fingerprint": job.dataset_fingerprint,
                "params": dict(job.spec),
                "source_job_id": job.id,
                "mlflow_run_id": job.mlflow_run_id,
                "description": description,
            }
        checkpoint = body.get("checkpoint")
        if not checkpoint or not isinstance(checkpoint, str):
            raise InvalidSpecError(
                "give job_id (a SUCCEEDED fine-tune job) or checkpoint (a .pth path, file:// or "
                "s3:// URI)",
                field="checkpoint",
            )
        size = body.get("model_size", "nano")
        if size not in MODEL_SIZES:
            raise InvalidSpecError(
                f"unknown model size {size!r}; choose one of {sorted(MODEL_SIZES)}",
                field="model_size",
            )
        resolution = body.get("resolution", MODEL_SIZES[size][0])
        if not isinstance(resolution, int) or isinstance(resolution, bool):
            raise InvalidSpecError("resolution must be a whole number", field="resolution")
        try:
            check_resolution(size, resolution)
        except ValueError as exc:
            raise InvalidSpecError(str(exc), field="resolution") from None
        return {
            "checkpoint_uri": checkpoint,
            "expected_sha256": body.get("checkpoint_sha256"),
            "model_size": size,
            "resolution": resolution,
            "class_names": [str(n) for n in body.get("class_names") or []],
            "description": description,
        }

    # -- promotions ----------------------------------------------------------------------------
    def request_promotion(
        self,
        name: str,
        version: int,
        *,
        to: Stage,
        reason: str,
        principal: ApiKey,
        request_id: str | None,
    ) -> Promotion:
        """Record the request (202 for the caller) and wake the promotion worker."""
        if to == Stage.production and not principal.role.allows(Role.approver):
            raise PermissionDeniedError(
                f"promoting to production needs the approver role or higher; key "
                f"{principal.name!r} has {principal.role.value}"
            )
        promotion = self.registry.request_promotion(
            name, version, to.value, actor=principal.principal, reason=reason, request_id=request_id
        )
        self.wake.set()
        return promotion

    def promotion(self, promotion_id: str) -> Promotion:
        """A promotion, advanced first if it is still active."""
        promotion = self.registry.get_promotion(promotion_id)
        if not promotion.state.is_terminal:
            promotion = self.advance(promotion_id)
        return promotion

    def advance_all(self) -> int:
        """Advance every active promotion one step; returns how many were looked at."""
        active = self.registry.list_promotions(states=ACTIVE_PROMOTION_STATES, limit=1000)
        for promotion in reversed(active):
            try:
                self.advance(promotion.id)
            except DetrforgeError as exc:
                log.warning("promotion %s: %s", promotion.id, exc.message)
        return len(active)

    def advance(self, promotion_id: str) -> Promotion:
        """Move one promotion as far as it can go now; never blocks on a job."""
        with self._advance_lock:
            return self._advance(promotion_id)

    def _advance(self, promotion_id: str) -> Promotion:
        promotion = self.registry.get_promotion(promotion_id)
        if promotion.state.is_terminal:
            return promotion
        name = promotion.model_name
        policy = GatePolicy.model_validate(self.registry.get_model(name).policy or {})
        candidate = self.registry.get_version(name, promotion.version)
        if promotion.state == PromotionState.pending:
            integrity = self._integrity_gate(candidate)
            if not integrity.passed:
                return self._finish(promotion, [integrity], passed=False, message=integrity.detail)
            production = self.registry.version_in_stage(name, Stage.production)
            baseline = production.version if production is not None else None
            promotion = self.registry.update_promotion(
                promotion.id, state=PromotionState.running, baseline_version=baseline
            )
        baseline_version = (
            self.registry.get_version(name, promotion.baseline_version)
            if promotion.baseline_version is not None
            else None
        )
        evidence = [dict(item) for item in promotion.evidence]
        try:
            for _ in range(2):  # a baseline benchmark is planned once the candidate's is known
                missing = self._plan(policy, promotion, candidate, baseline_version, evidence)
                for need in missing:
                    evidence.append(
                        self._gather(need, policy, promotion, candidate, baseline_version, evidence)
                    )
                if missing:
                    promotion = self.registry.update_promotion(promotion.id, evidence=evidence)
                if not self._collect(evidence, policy):
                    self.registry.update_promotion(promotion.id, evidence=evidence)
                    return self.registry.get_promotion(promotion.id)
            promotion = self.registry.update_promotion(promotion.id, evidence=evidence)
            if self._plan(policy, promotion, candidate, baseline_version, evidence):
                return promotion
        except _ClusterBusy:
            # Unreachable or busy cluster: keep what was gathered, try again on the next pass.
            return self.registry.update_promotion(promotion.id, evidence=evidence)
        except _EvidenceFailed as exc:
            self.registry.update_promotion(promotion.id, evidence=evidence)
            return self._finish(promotion, [], passed=False, message=str(exc))
        # The stored bytes are re-hashed once more just before the stage changes: what is
        # promoted is exactly what was registered, however long the evidence took.
        results = [
            self._integrity_gate(candidate),
            *check_gates(
                policy,
                _evidence_for("candidate", candidate, evidence),
                _evidence_for("baseline", baseline_version, evidence) if baseline_version else None,
            ),
        ]
        passed = all(result.passed for result in results)
        failed = [r for r in results if not r.passed]
        if policy.is_empty and passed:
            message = "no gates configured for this model: promoted without checks"
        elif passed:
            message = f"all {len(results)} gates passed"
        else:
            message = "refused: " + "; ".join(f"{r.gate}: {r.detail}" for r in failed)
        return self._finish(promotion, results, passed=passed, message=message)

    def _integrity_gate(self, version: ModelVersion) -> GateResult:
        """Re-hash the candidate's stored bytes against the sha256 recorded at registration."""
        uri = version.checkpoint_uri
        try:
            if "://" in uri:
                actual = open_store(uri.rsplit("/", 1)[0]).sha256(uri)
            else:
                actual = sha256_file(Path(uri))
            passed = actual == version.checkpoint_sha256
            detail = (
                "checkpoint sha256 matches the registered one"
                if passed
                else f"checkpoint changed or corrupt: {uri} has sha256 {actual}, registered "
                f"{version.checkpoint_sha256}"
            )
        except (DetrforgeError, OSError) as exc:
            actual, passed = None, False
            text = exc.message if isinstance(exc, DetrforgeError) else str(exc)
            detail = f"checkpoint changed or corrupt: {uri} cannot be read ({text})"
        return GateResult(
            gate="integrity",
            metric="checkpoint_sha256",
            candidate=None,
            baseline=None,
            threshold=None,
            passed=passed,
            detail=detail,
            evidence={"uri": uri, "sha256": actual, "registered": version.checkpoint_sha256},
        )

    def _plan(
        self,
        policy: GatePolicy,
        promotion: Promotion,
        candidate: ModelVersion,
        baseline: ModelVersion | None,
        evidence: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """The evidence the gates still need and that nobody has gathered yet."""
        needs: list[dict[str, Any]] = []
        if policy.needs_ap:
            needs.append({"role": "candidate", "kind": "evaluate"})
            if baseline is not None and policy.max_ap_drop is not None:
                needs.append({"role": "baseline", "kind": "evaluate"})
        for gate in policy.targets:
            needs.append({"role": "candidate", "kind": "benchmark", "target": gate.target})
            if baseline is not None and gate.max_p95_ratio is not None:
                mine = _find(evidence, "candidate", "benchmark", gate.target)
                if mine is not None and mine.get("state") == "done":
                    needs.append({"role": "baseline", "kind": "benchmark", "target": gate.target})
        return [
            need
            for need in needs
            if _find(evidence, need["role"], need["kind"], need.get("target")) is None
        ]

    def _gather(
        self,
        need: dict[str, Any],
        policy: GatePolicy,
        promotion: Promotion,
        candidate: ModelVersion,
        baseline: ModelVersion | None,
        evidence: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """Reuse a result that already answers ``need``, or submit the job that will."""
        version = candidate if need["role"] == "candidate" else baseline
        assert version is not None
        item = {**need, "version": version.version}
        actor = SystemPrincipal(f"promotion:{promotion.id}")
        body: dict[str, Any] = {
            "checkpoint": version.checkpoint_uri,
            "checkpoint_sha256": version.checkpoint_sha256,
            "model_size": version.model_size,
            "resolution": version.resolution,
        }
        try:
            if need["kind"] == "evaluate":
                assert policy.eval is not None
                reused = self._reusable_evaluation(version, policy)
                if reused is not None:
                    return {**item, **_ap_item(reused), "reused": True}
                job = self.jobs.submit_evaluation(
                    {
                        **body,
                        "dataset": policy.eval.dataset,
                        "split": policy.eval.split,
                        "backend": policy.eval.backend,
                    },
                    principal=actor,
                )
            else:
                if need["role"] == "baseline":
                    record = self._reusable_benchmark(version, need["target"], evidence)
                    if record is not None:
                        return {**item, **_p95_item(record), "reused": True}
                job = self.jobs.submit_benchmark(
                    {
                        **body,
                        "target": need["target"],
                        "runs": policy.benchmark_runs,
                        "warmup": policy.benchmark_warmup,
                        "model_name": promotion.model_name,
                        "model_version": version.version,
                    },
                    principal=actor,
                )
        except ClusterError as exc:
            log.warning("promotion %s waits for the cluster: %s", promotion.id, exc.message)
            raise _ClusterBusy(exc.message) from None
        except DetrforgeError as exc:
            raise _EvidenceFailed(
                f"could not start the {need['kind']} of v{version.version} ({need['role']}"
                f"{', ' + need['target'] if need.get('target') else ''}): {exc.message}"
            ) from None
        return {**item, "job_id": job.id, "state": "submitted"}

    def _reusable_evaluation(self, version: ModelVersion, policy: GatePolicy) -> Job | None:
        assert policy.eval is not None
        for job in self._succeeded("evaluate"):
            spec = job.spec
            if (
                spec.get("checkpoint_sha256") == version.checkpoint_sha256
                and spec.get("dataset") == policy.eval.dataset
                and spec.get("split") == policy.eval.split
                and spec.get("backend") == policy.eval.backend
                and job.dataset_fingerprint == policy.eval.fingerprint
                and AP_METRIC in job.metrics
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

    def _reusable_benchmark(
        self, version: ModelVersion, target: str, evidence: list[dict[str, Any]]
    ) -> BenchmarkRecord | None:
        """The newest record of ``version`` on ``target`` measured like the candidate's."""
        mine = _find(evidence, "candidate", "benchmark", target)
        if mine is None or "record_id" not in mine:
            return None
        reference = self.benchmarks.get(mine["record_id"])
        records, _ = self.benchmarks.list(
            checkpoint_sha256=version.checkpoint_sha256, target=target, limit=100
        )
        for record in records:
            same_run = (
                record.backend == reference.backend
                and record.precision == reference.precision
                and record.resolution == version.resolution
                and record.batch_size == reference.batch_size
                and record.threads == reference.threads
            )
            pins = all(
                record.environment.get(key) == reference.environment.get(key)
                for key in ENV_PIN_KEYS
            )
            if same_run and pins:
                return record
        return None

    def _collect(self, evidence: list[dict[str, Any]], policy: GatePolicy) -> bool:
        """Read finished jobs into ``evidence``; True once every item is done.

        Raises:
            _EvidenceFailed: a job failed or was cancelled.
        """
        done = True
        for item in evidence:
            if item.get("state") == "done":
                continue
            job = self.jobs.reconcile(item["job_id"])
            if job.state == JobState.SUCCEEDED:
                if item["kind"] == "evaluate":
                    pinned = policy.eval.fingerprint if policy.eval else None
                    if job.dataset_fingerprint != pinned:
                        raise _EvidenceFailed(
                            f"the eval set changed since the policy was set (fingerprint "
                            f"{job.dataset_fingerprint}, pinned {pinned}); set the policy again "
                            "to accept the new set"
                        )
                    item.update(_ap_item(job))
                else:
                    record = self.benchmarks.get_by_job(job.id)
                    if record is None:
                        raise _EvidenceFailed(f"benchmark job {job.id} left no record")
                    item.update(_p95_item(record))
            elif job.is_terminal:
                raise _EvidenceFailed(
                    f"the {item['kind']} job {job.id} of v{item['version']} ({item['role']}) "
                    f"ended {job.state.value}: {job.error or 'no error recorded'}"
                )
            else:
                item["state"] = job.state.value.lower()
                done = False
        return done

    def _finish(
        self, promotion: Promotion, results: list[GateResult], *, passed: bool, message: str
    ) -> Promotion:
        finished = self.registry.finish_promotion(
            promotion.id,
            gate_results=results,
            passed=passed,
            message=message,
            before_commit=self._failpoint("promotion.before_commit"),
        )
        self.sync_mlflow(promotion.model_name)
        return finished

    def _failpoint(self, name: str) -> Callable[[], None] | None:
        if name not in self.failpoints:
            return None

        def crash() -> None:
            log.error("failpoint %s: exiting the process now", name)
            logging.shutdown()
            os._exit(FAILPOINT_EXIT_CODE)

        return crash

    # -- rollback ------------------------------------------------------------------------------
    def rollback(
        self, name: str, *, reason: str, principal: Principal, request_id: str | None
    ) -> ModelVersion:
        version = self.registry.rollback(
            name, actor=principal.principal, reason=reason, request_id=request_id
        )
        self.sync_mlflow(name)
        return version

    # -- MLflow mirror -------------------------------------------------------------------------
    def sync_mlflow(self, name: str) -> bool:
        """Mirror the model, its versions and the ``staging``/``production`` aliases to MLflow.

        Best effort: the registry database is the source of truth, and a failed mirror is logged
        and repaired by the next sync. Returns whether the mirror is now in step.
        """
        from mlflow.exceptions import MlflowException

        client = self.tracker.client
        with self._mlflow_lock:
            try:
                model = self.registry.get_model(name)
                try:
                    client.create_registered_model(name, description=model.description or None)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                for version in reversed(self.registry.list_versions(name)):
                    if version.mlflow_version is None:
                        mirrored = client.create_model_version(
                            name,
                            source=version.checkpoint_uri,
                            run_id=version.mlflow_run_id,
                            tags={
                                Tag.VERSION: str(version.version),
                                Tag.CHECKPOINT_SHA256: version.checkpoint_sha256,
                            },
                            description=version.description or None,
                        )
                        self.registry.set_mlflow_version(name, version.version, mirrored.version)
                for stage in (Stage.staging, Stage.production):
                    holder = self.registry.version_in_stage(name, stage)
                    if holder is not None and holder.mlflow_version is not None:
                        client.set_registered_model_alias(name, stage.value, holder.mlflow_version)
                    elif holder is None:
                        try:
                            client.delete_registered_model_alias(name, stage.value)
                        except MlflowException:
                            pass  # no such alias: already in step
                return True
            except (MlflowException, DetrforgeError, OSError):
                log.exception("mirroring model %s to MLflow failed; the next sync retries", name)
                return False


class _ClusterBusy(Exception):
    """The cluster could not take a job just now; the promotion retries on its next pass."""


class _EvidenceFailed(Exception):
    """A job the gates needed could not run or failed: the promotion fails with this message."""


def _find(
    evidence: list[dict[str, Any]], role: str, kind: str, target: str | None
) -> dict[str, Any] | None:
    for item in evidence:
        if item["role"] == role and item["kind"] == kind and item.get("target") == target:
            return item
    return None


def _ap_item(job: Job) -> dict[str, Any]:
    return {
        "state": "done",
        "job_id": job.id,
        "ap": float(job.metrics[AP_METRIC]),
        "mlflow_run_id": job.mlflow_run_id,
    }


def _p95_item(record: BenchmarkRecord) -> dict[str, Any]:
    return {
        "state": "done",
        "job_id": record.job_id,
        "record_id": record.id,
        "p95_ms": record.p95_ms,
        "mlflow_run_id": record.mlflow_run_id,
        "node_id": record.node_id,
    }


def _evidence_for(role: str, version: ModelVersion | None, items: list[dict[str, Any]]) -> Evidence:
    assert version is not None
    ap_item = _find(items, role, "evaluate", None)
    p95: dict[str, float] = {}
    p95_evidence: dict[str, dict[str, Any]] = {}
    for item in items:
        if item["role"] == role and item["kind"] == "benchmark":
            p95[item["target"]] = float(item["p95_ms"])
            p95_evidence[item["target"]] = _source(item)
    return Evidence(
        version=version.version,
        ap=float(ap_item["ap"]) if ap_item else None,
        ap_evidence=_source(ap_item) if ap_item else {},
        p95_ms=p95,
        p95_evidence=p95_evidence,
    )


def _source(item: dict[str, Any]) -> dict[str, Any]:
    keys = ("version", "job_id", "mlflow_run_id", "record_id", "node_id", "reused")
    return {key: item[key] for key in keys if key in item}
