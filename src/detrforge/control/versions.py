"""Registered models and their versions as users drive them: create a model, set its gate
policy, register a version (from a fine-tune job, a checkpoint, or a sweep trial), roll back.

Every change is mirrored to MLflow afterwards (``mirror.py``); promotions live in
``promotion.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detrforge.control.jobs import JobService
from detrforge.control.mirror import MlflowMirror
from detrforge.control.variants import check_shipped
from detrforge.detector.sizes import as_model_size, check_resolution, default_resolution
from detrforge.platform.checkpoints import staged_checkpoint
from detrforge.platform.errors import IntegrityError, InvalidSpecError, NotFoundError
from detrforge.platform.sources import SourcePolicy
from detrforge.platform.storage import open_store
from detrforge.registry.entities import ModelVersion, Principal, RegisteredModel
from detrforge.registry.gates import GatePolicy
from detrforge.registry.models import ModelStore

__all__ = ["VersionRequest", "VersionService", "VersionSource"]


@dataclass(frozen=True, kw_only=True)
class VersionRequest:
    """What a caller asks to register: ``job_id`` (a SUCCEEDED fine-tune job) or ``checkpoint``
    with its size and resolution (defaults: nano at the size's own resolution)."""

    job_id: str | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    model_size: str | None = None
    resolution: int | None = None
    class_names: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class VersionSource:
    """Resolved lineage of a version to register: where the bytes are and where they came from.

    ``expected_sha256``, when set, must equal the sha256 of the bytes read.
    """

    checkpoint_uri: str
    model_size: str
    resolution: int
    expected_sha256: str | None = None
    class_names: tuple[str, ...] = ()
    dataset_fingerprint: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    source_job_id: str | None = None
    source_trial_id: str | None = None
    mlflow_run_id: str | None = None
    description: str = ""


@dataclass
class VersionService:
    """Owns model and version workflows; the store holds the state."""

    store: ModelStore
    jobs: JobService
    mirror: MlflowMirror
    cache_dir: Path
    # Which paths and URIs callers may register checkpoints from.
    sources: SourcePolicy
    max_checkpoint_bytes: int = 2 * 1024**3
    checkpoint_load_timeout_s: float = 120.0

    def create_model(
        self, name: str, *, description: str, principal: Principal, request_id: str | None
    ) -> RegisteredModel:
        model = self.store.create_model(
            name, description=description, actor=principal.principal, request_id=request_id
        )
        self.mirror.sync(name)
        return model

    def set_policy(
        self,
        name: str,
        policy: GatePolicy,
        *,
        reason: str | None,
        principal: Principal,
        request_id: str | None,
    ) -> RegisteredModel:
        """Store a gate policy; its targets must exist and its eval set's fingerprint is pinned."""
        self.store.get_model(name)
        for i, gate in enumerate(policy.targets):
            try:
                target = self.jobs.targets.get(gate.target)
            except NotFoundError:
                raise InvalidSpecError(
                    f"targets: hardware target {gate.target!r} does not exist; create it with "
                    "`detrforge bench targets create` first",
                    field="targets",
                ) from None
            if gate.variant is not None:
                check_shipped(gate.variant, target.resources, field=f"targets.{i}.variant")
        if policy.eval is not None:
            # Mask gates score masks: every object of the pinned set needs one.
            info = self.jobs.intake_dataset(
                policy.eval.dataset, field="eval.dataset", require_masks=policy.needs_mask_ap
            )
            pinned = policy.eval.model_copy(update={"fingerprint": info.fingerprint})
            policy = policy.model_copy(update={"eval": pinned})
        return self.store.set_policy(
            name,
            policy.model_dump(mode="json"),
            actor=principal.principal,
            reason=reason,
            request_id=request_id,
        )

    def register_version(
        self, name: str, request: VersionRequest, *, principal: Principal, request_id: str | None
    ) -> ModelVersion:
        """Register a finished fine-tune job's model (``job_id``) or a checkpoint URI.

        The checkpoint must be an RF-DETR checkpoint under a data root (or in an allowed bucket);
        its sha256 is computed from the bytes and must equal the one the job recorded (or the one
        given): a mismatch is refused as "checkpoint changed or corrupt".
        """
        self.store.get_model(name)
        source = self._resolve(request)
        return self.register_source(name, source, principal=principal, request_id=request_id)

    def register_source(
        self, name: str, source: VersionSource, *, principal: Principal, request_id: str | None
    ) -> ModelVersion:
        """Register a version from resolved lineage (a job's, a sweep trial's
        ``SweepService.trial_source``, ...).

        The checkpoint is copied into the artifact store under its sha256
        (``blobs/sha256/<hex>``), and the version points at that copy: replacing the original
        file later changes nothing.
        """
        self.store.get_model(name)
        location = self.sources.check(source.checkpoint_uri, field="checkpoint")
        with staged_checkpoint(
            location,
            self.cache_dir / "staging",
            max_bytes=self.max_checkpoint_bytes,
            timeout_s=self.checkpoint_load_timeout_s,
            field="checkpoint",
        ) as staged:
            expected = source.expected_sha256
            if expected is not None and expected != staged.sha256:
                # The real sha256 is not printed: only registered bytes have a public hash.
                raise IntegrityError(
                    f"checkpoint changed or corrupt: the sha256 of {source.checkpoint_uri} "
                    f"differs from the expected {expected}; check the file, or register it "
                    "without checkpoint_sha256",
                    field="checkpoint_sha256",
                )
            blob = open_store(self.jobs.artifact_root).put_blob(staged.path, staged.sha256)
        version = self.store.register_version(
            name,
            checkpoint_uri=blob.uri,
            checkpoint_sha256=blob.sha256,
            checkpoint_bytes=blob.size,
            source_uri=source.checkpoint_uri,
            model_size=source.model_size,
            resolution=source.resolution,
            class_names=list(source.class_names or staged.class_names),
            dataset_fingerprint=source.dataset_fingerprint,
            params=source.params,
            source_job_id=source.source_job_id,
            source_trial_id=source.source_trial_id,
            mlflow_run_id=source.mlflow_run_id,
            description=source.description,
            actor=principal.principal,
            request_id=request_id,
        )
        self.mirror.sync(name)
        return self.store.get_version(name, version.version)

    def _resolve(self, request: VersionRequest) -> VersionSource:
        if request.job_id:
            job = self.jobs.finished_finetune(request.job_id)
            assert job.model_uri is not None  # finished_finetune refuses a job without one
            return VersionSource(
                checkpoint_uri=job.model_uri,
                expected_sha256=job.model_sha256,
                model_size=job.spec.get("model_size", "nano"),
                resolution=int(job.spec["resolution"]),
                class_names=request.class_names,
                dataset_fingerprint=job.dataset_fingerprint,
                params=dict(job.spec),
                source_job_id=job.id,
                mlflow_run_id=job.mlflow_run_id,
                description=request.description,
            )
        if not request.checkpoint:
            raise InvalidSpecError(
                "give job_id (a SUCCEEDED fine-tune job) or checkpoint (a .pth path, file:// or "
                "s3:// URI)",
                field="checkpoint",
            )
        size = as_model_size(request.model_size or "nano")
        resolution = request.resolution or default_resolution(size)
        try:
            check_resolution(size, resolution)
        except ValueError as exc:
            raise InvalidSpecError(str(exc), field="resolution") from None
        return VersionSource(
            checkpoint_uri=request.checkpoint,
            expected_sha256=request.checkpoint_sha256,
            model_size=size,
            resolution=resolution,
            class_names=request.class_names,
            description=request.description,
        )

    def rollback(
        self, name: str, *, reason: str, principal: Principal, request_id: str | None
    ) -> ModelVersion:
        """Re-point production to the previous production version; no gates; audited."""
        version = self.store.rollback(
            name, actor=principal.principal, reason=reason, request_id=request_id
        )
        self.mirror.sync(name)
        return version
