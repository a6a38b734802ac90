"""ORM rows of the registry database; stores turn them into entities with ``to_entity()``.

The schema itself is owned by the hand-written migrations in ``migrations/versions``: a change
here needs a new migration there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from detrforge.platform.db import Base, UtcDateTime
from detrforge.registry.entities import (
    ApiKey,
    AuditEvent,
    BenchmarkRecord,
    GateResult,
    HardwareTarget,
    Job,
    JobState,
    ModelVersion,
    Promotion,
    PromotionState,
    Role,
    Stage,
    VersionVariant,
)

__all__ = [
    "AUDIT_APPEND_ONLY_MESSAGE",
    "BENCHMARK_APPEND_ONLY_MESSAGE",
    "JSON_TYPE",
    "SqlApiKey",
    "SqlAuditEvent",
    "SqlBenchmarkRecord",
    "SqlGatePolicy",
    "SqlGateResult",
    "SqlHardwareTarget",
    "SqlJob",
    "SqlModelVersion",
    "SqlPromotion",
    "SqlRegisteredModel",
    "SqlVersionVariant",
]

# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")


class SqlJob(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    created_by: Mapped[str] = mapped_column(String(255))
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(128))
    ray_submission_id: Mapped[str | None] = mapped_column(String(255))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    checkpoint_uri: Mapped[str | None] = mapped_column(Text)
    # The sha256 of model_uri (the column keeps its first name).
    model_sha256: Mapped[str | None] = mapped_column("checkpoint_sha256", String(64))
    model_uri: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    def to_entity(self) -> Job:
        return Job(
            id=self.id,
            kind=self.kind,
            state=JobState(self.state),
            spec=dict(self.spec),
            created_by=self.created_by,
            dataset_fingerprint=self.dataset_fingerprint,
            ray_submission_id=self.ray_submission_id,
            mlflow_run_id=self.mlflow_run_id,
            error=self.error,
            progress=dict(self.progress or {}),
            metrics=dict(self.metrics or {}),
            checkpoint_uri=self.checkpoint_uri,
            model_sha256=self.model_sha256,
            model_uri=self.model_uri,
            # UtcDateTime already yields aware UTC values on every backend.
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            updated_at=self.updated_at,
        )


class SqlApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    def to_entity(self) -> ApiKey:
        return ApiKey(
            id=self.id,
            name=self.name,
            role=Role(self.role),
            prefix=self.prefix,
            created_at=self.created_at,
            last_used_at=self.last_used_at,
            revoked_at=self.revoked_at,
        )


# What the database says when anything tries to change or remove a benchmark record; the
# triggers that enforce it are created by migration 0002.
BENCHMARK_APPEND_ONLY_MESSAGE = "benchmark_records is append-only"


class SqlHardwareTarget(Base):
    __tablename__ = "hardware_targets"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    description: Mapped[str] = mapped_column(Text)
    resources: Mapped[dict[str, float]] = mapped_column(JSON_TYPE)
    backend: Mapped[str] = mapped_column(String(32))
    precision: Mapped[str] = mapped_column(String(8))
    batch_size: Mapped[int] = mapped_column(Integer)
    num_threads: Mapped[int | None] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    def to_entity(self) -> HardwareTarget:
        return HardwareTarget(
            name=self.name,
            description=self.description,
            resources=dict(self.resources),
            backend=self.backend,
            precision=self.precision,
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            created_by=self.created_by,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


class SqlBenchmarkRecord(Base):
    """A row of the append-only benchmark history: inserted once, never updated or deleted."""

    __tablename__ = "benchmark_records"
    __table_args__ = (
        Index("ix_benchmark_records_target_created_at", "target", "created_at"),
        Index("ix_benchmark_records_checkpoint_sha256", "checkpoint_sha256"),
        Index("ix_benchmark_records_job_id", "job_id", unique=True),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # No foreign key to jobs: the history must stand on its own (imports, pruned job tables).
    job_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    model_name: Mapped[str | None] = mapped_column(String(255))
    model_version: Mapped[int | None] = mapped_column(Integer)
    checkpoint_uri: Mapped[str] = mapped_column(Text)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    model_size: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(63))
    target_resources: Mapped[dict[str, float]] = mapped_column(JSON_TYPE)
    node_id: Mapped[str | None] = mapped_column(String(128))
    backend: Mapped[str] = mapped_column(String(32))
    precision: Mapped[str] = mapped_column(String(8))
    resolution: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer)
    warmup: Mapped[int] = mapped_column(Integer)
    runs: Mapped[int] = mapped_column(Integer)
    threads: Mapped[int | None] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(255))
    p50_ms: Mapped[float] = mapped_column(Double)
    p95_ms: Mapped[float] = mapped_column(Double)
    p99_ms: Mapped[float] = mapped_column(Double)
    mean_ms: Mapped[float] = mapped_column(Double)
    std_ms: Mapped[float] = mapped_column(Double)
    min_ms: Mapped[float] = mapped_column(Double)
    max_ms: Mapped[float] = mapped_column(Double)
    e2e_p50_ms: Mapped[float | None] = mapped_column(Double)
    e2e_p95_ms: Mapped[float | None] = mapped_column(Double)
    e2e_p99_ms: Mapped[float | None] = mapped_column(Double)
    images_per_s: Mapped[float] = mapped_column(Double)
    environment: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(128))
    paired: Mapped[dict[str, Any] | None] = mapped_column(JSON_TYPE)
    node_load: Mapped[dict[str, Any] | None] = mapped_column(JSON_TYPE)
    mask_p50_ms: Mapped[float | None] = mapped_column(Double)
    mask_p95_ms: Mapped[float | None] = mapped_column(Double)
    mask_p99_ms: Mapped[float | None] = mapped_column(Double)

    def to_entity(self) -> BenchmarkRecord:
        return BenchmarkRecord(
            id=self.id,
            job_id=self.job_id,
            created_at=self.created_at,
            model_name=self.model_name,
            model_version=self.model_version,
            checkpoint_uri=self.checkpoint_uri,
            checkpoint_sha256=self.checkpoint_sha256,
            model_size=self.model_size,
            target=self.target,
            target_resources=dict(self.target_resources),
            node_id=self.node_id,
            backend=self.backend,
            precision=self.precision,
            resolution=self.resolution,
            batch_size=self.batch_size,
            warmup=self.warmup,
            runs=self.runs,
            threads=self.threads,
            device=self.device,
            p50_ms=self.p50_ms,
            p95_ms=self.p95_ms,
            p99_ms=self.p99_ms,
            mean_ms=self.mean_ms,
            std_ms=self.std_ms,
            min_ms=self.min_ms,
            max_ms=self.max_ms,
            e2e_p50_ms=self.e2e_p50_ms,
            e2e_p95_ms=self.e2e_p95_ms,
            e2e_p99_ms=self.e2e_p99_ms,
            images_per_s=self.images_per_s,
            environment=dict(self.environment or {}),
            mlflow_run_id=self.mlflow_run_id,
            dataset_fingerprint=self.dataset_fingerprint,
            paired=self.paired,
            node_load=self.node_load,
            mask_p50_ms=self.mask_p50_ms,
            mask_p95_ms=self.mask_p95_ms,
            mask_p99_ms=self.mask_p99_ms,
        )


# What the database says when anything tries to change or remove an audit event (migration 0003).
AUDIT_APPEND_ONLY_MESSAGE = "audit_events is append-only"


class SqlRegisteredModel(Base):
    __tablename__ = "registered_models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Bumped by every write that must serialize per model: an UPDATE of this row is the portable
    # row lock (PostgreSQL locks the row, SQLite takes its write lock) before reading stages.
    lock_seq: Mapped[int] = mapped_column(BigInteger)


class SqlGatePolicy(Base):
    __tablename__ = "gate_policies"

    model_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("registered_models.id", ondelete="CASCADE"), primary_key=True
    )
    policy: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    updated_by: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SqlModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        Index("uq_model_versions_model_id_version", "model_id", "version", unique=True),
        # At most one production and one staging version per model, enforced by the database.
        Index(
            "uq_model_versions_one_production",
            "model_id",
            unique=True,
            sqlite_where=text("stage = 'production'"),
            postgresql_where=text("stage = 'production'"),
        ),
        Index(
            "uq_model_versions_one_staging",
            "model_id",
            unique=True,
            sqlite_where=text("stage = 'staging'"),
            postgresql_where=text("stage = 'staging'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(32), ForeignKey("registered_models.id"))
    version: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(16))
    checkpoint_uri: Mapped[str] = mapped_column(Text)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    checkpoint_bytes: Mapped[int] = mapped_column(BigInteger)
    model_size: Mapped[str] = mapped_column(String(16))
    resolution: Mapped[int] = mapped_column(Integer)
    class_names: Mapped[list[str]] = mapped_column(JSON_TYPE)
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(128))
    params: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    source_job_id: Mapped[str | None] = mapped_column(String(32))
    source_trial_id: Mapped[str | None] = mapped_column(String(128))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_version: Mapped[str | None] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    stage_changed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    replaced_version: Mapped[int | None] = mapped_column(Integer)

    def to_entity(self, model_name: str) -> ModelVersion:
        return ModelVersion(
            id=self.id,
            model_name=model_name,
            version=self.version,
            stage=Stage(self.stage),
            checkpoint_uri=self.checkpoint_uri,
            checkpoint_sha256=self.checkpoint_sha256,
            checkpoint_bytes=self.checkpoint_bytes,
            model_size=self.model_size,
            resolution=self.resolution,
            class_names=list(self.class_names or []),
            dataset_fingerprint=self.dataset_fingerprint,
            params=dict(self.params or {}),
            source_job_id=self.source_job_id,
            source_trial_id=self.source_trial_id,
            mlflow_run_id=self.mlflow_run_id,
            mlflow_version=self.mlflow_version,
            description=self.description,
            created_by=self.created_by,
            created_at=self.created_at,
            stage_changed_at=self.stage_changed_at,
            replaced_version=self.replaced_version,
        )


class SqlPromotion(Base):
    __tablename__ = "promotions"
    __table_args__ = (
        # One active promotion per model: concurrent requests serialize on this index.
        Index(
            "uq_promotions_one_active",
            "model_id",
            unique=True,
            sqlite_where=text("state IN ('pending', 'running')"),
            postgresql_where=text("state IN ('pending', 'running')"),
        ),
        Index("ix_promotions_model_id_created_at", "model_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(32), ForeignKey("registered_models.id"))
    version: Mapped[int] = mapped_column(Integer)
    from_stage: Mapped[str] = mapped_column(String(16))
    to_stage: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(64))
    baseline_version: Mapped[int | None] = mapped_column(Integer)
    evidence: Mapped[list[dict[str, Any]]] = mapped_column(JSON_TYPE)
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The API replica advancing it and until when (``registry.leases``); migration 0004.
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    def to_entity(self, model_name: str, gate_results: list[GateResult]) -> Promotion:
        return Promotion(
            id=self.id,
            model_name=model_name,
            version=self.version,
            from_stage=Stage(self.from_stage),
            to_stage=Stage(self.to_stage),
            state=PromotionState(self.state),
            actor=self.actor,
            reason=self.reason,
            request_id=self.request_id,
            baseline_version=self.baseline_version,
            evidence=list(self.evidence or []),
            message=self.message,
            gate_results=gate_results,
            created_at=self.created_at,
            updated_at=self.updated_at,
            finished_at=self.finished_at,
        )


class SqlGateResult(Base):
    __tablename__ = "gate_results"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    promotion_id: Mapped[str] = mapped_column(String(32), ForeignKey("promotions.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    gate: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(63))
    metric: Mapped[str] = mapped_column(String(64))
    candidate: Mapped[float | None] = mapped_column(Double)
    baseline: Mapped[float | None] = mapped_column(Double)
    threshold: Mapped[float | None] = mapped_column(Double)
    passed: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    def to_entity(self) -> GateResult:
        return GateResult(
            gate=self.gate,
            target=self.target,
            metric=self.metric,
            candidate=self.candidate,
            baseline=self.baseline,
            threshold=self.threshold,
            passed=self.passed,
            detail=self.detail,
            evidence=dict(self.evidence or {}),
        )


class SqlAuditEvent(Base):
    """A row of the append-only audit log; triggers refuse UPDATE and DELETE (migration 0003)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_model_name_id", "model_name", "id"),
        Index("ix_audit_events_request_id", "request_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str | None] = mapped_column(String(255))
    version: Mapped[int | None] = mapped_column(Integer)
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)

    def to_entity(self) -> AuditEvent:
        return AuditEvent(
            id=self.id,
            at=self.at,
            actor=self.actor,
            action=self.action,
            model_name=self.model_name,
            version=self.version,
            before=self.before,
            after=self.after,
            reason=self.reason,
            request_id=self.request_id,
            details=dict(self.details or {}),
        )


class SqlVersionVariant(Base):
    """A built variant of a version; the same bytes (sha256) are recorded once per version."""

    __tablename__ = "version_variants"
    __table_args__ = (
        Index("uq_version_variants_version_name_sha", "version_id", "name", "sha256", unique=True),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    version_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(32))
    runtime: Mapped[str] = mapped_column(String(32))
    precision: Mapped[str] = mapped_column(String(8))
    artifact_uri: Mapped[str] = mapped_column(Text)
    model_file: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    build_seconds: Mapped[float] = mapped_column(Double)
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    def to_entity(self, model_name: str, version: int) -> VersionVariant:
        return VersionVariant(
            id=self.id,
            model_name=model_name,
            version=version,
            name=self.name,
            runtime=self.runtime,
            precision=self.precision,
            artifact_uri=self.artifact_uri,
            model_file=self.model_file,
            sha256=self.sha256,
            size_bytes=self.size_bytes,
            build_seconds=self.build_seconds,
            recipe=dict(self.recipe),
            metrics=dict(self.metrics or {}),
            created_by=self.created_by,
            created_at=self.created_at,
        )
