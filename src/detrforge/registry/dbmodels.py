"""ORM rows of the registry database; stores turn them into entities with ``to_entity()``.

The schema itself is owned by the hand-written migrations in ``migrations/versions``: a change
here needs a new migration there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from detrforge.platform.db import Base, UtcDateTime
from detrforge.registry.entities import ApiKey, Job, JobState, Role

__all__ = ["JSON_TYPE", "SqlApiKey", "SqlJob"]

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
