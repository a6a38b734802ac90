"""ORM rows of the registry database; stores turn them into entities with ``to_entity()``.

The schema itself is owned by the hand-written migrations in ``migrations/versions``: a change
here needs a new migration there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Double, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from detrforge.platform.db import Base, UtcDateTime
from detrforge.registry.entities import (
    ApiKey,
    BenchmarkRecord,
    HardwareTarget,
    Job,
    JobState,
    Role,
)

__all__ = [
    "BENCHMARK_APPEND_ONLY_MESSAGE",
    "JSON_TYPE",
    "SqlApiKey",
    "SqlBenchmarkRecord",
    "SqlHardwareTarget",
    "SqlJob",
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
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
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
            checkpoint_sha256=self.checkpoint_sha256,
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
        )
