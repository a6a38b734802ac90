"""Request and response bodies of the control API (``XCreate`` / ``XPublic`` / ``XsPublic``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from detrforge.detector.specs import RESOURCE_AMOUNTS_SCHEMA, check_resource_amounts
from detrforge.platform.limits import Description, Name
from detrforge.registry.entities import ApiKey, Job, Role

__all__ = [
    "BenchmarkRecordsPublic",
    "JobPublic",
    "JobsPublic",
    "KeyCreate",
    "KeyCreated",
    "KeyPublic",
    "KeysPublic",
    "TargetCreate",
    "TargetPublic",
    "TargetUpdate",
    "TargetsPublic",
]


class JobPublic(BaseModel):
    id: str
    kind: str
    state: str
    spec: dict[str, Any]
    created_by: str
    dataset_fingerprint: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    ray_submission_id: str | None
    mlflow_run_id: str | None
    error: str | None
    progress: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint_uri: str | None = Field(description="The latest resumable Ray Train checkpoint.")
    model_uri: str | None = Field(description="The best-by-validation-AP weights (.pth).")
    model_sha256: str | None

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        return cls(
            id=job.id,
            kind=job.kind,
            state=job.state.value,
            spec=job.spec,
            created_by=job.created_by,
            dataset_fingerprint=job.dataset_fingerprint,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            ray_submission_id=job.ray_submission_id,
            mlflow_run_id=job.mlflow_run_id,
            error=job.error,
            progress=job.progress,
            metrics=job.metrics,
            checkpoint_uri=job.checkpoint_uri,
            model_uri=job.model_uri,
            model_sha256=job.model_sha256,
        )


class JobsPublic(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class _Request(BaseModel):
    """A request body: a wrong JSON type is a 422 naming the field, never a coercion."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class KeyCreate(_Request):
    name: Name
    # Enums are compared by value: strict mode would want a Python Role instance.
    role: Role = Field(default=Role.viewer, strict=False)


class KeyPublic(BaseModel):
    id: str
    name: str
    role: Role
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyPublic:
        return cls(
            id=key.id,
            name=key.name,
            role=key.role,
            prefix=key.prefix,
            created_at=key.created_at,
            last_used_at=key.last_used_at,
            revoked_at=key.revoked_at,
        )


class KeyCreated(KeyPublic):
    key: str = Field(description="The secret; shown once, store it now.")


class KeysPublic(BaseModel):
    items: list[KeyPublic]


# A target names at least one resource (TargetStore refuses an empty profile).
_TARGET_RESOURCES_SCHEMA = {**RESOURCE_AMOUNTS_SCHEMA, "minProperties": 1}


class TargetCreate(_Request):
    name: StrictStr = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    description: Description = ""
    resources: dict[str, float] = Field(
        description='Ray resources for one benchmark task, e.g. {"hw_cpu_x86": 1}.',
        json_schema_extra=_TARGET_RESOURCES_SCHEMA,
    )
    backend: StrictStr = Field(default="torch", min_length=1, max_length=32)
    precision: StrictStr = Field(default="fp32", min_length=1, max_length=32)
    batch_size: int = Field(default=1, ge=1, le=256)
    num_threads: int | None = Field(default=None, ge=1, le=256)

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, float]) -> dict[str, float]:
        return check_resource_amounts(value)


class TargetUpdate(_Request):
    description: Description | None = None
    resources: dict[str, float] | None = Field(
        default=None, json_schema_extra=_TARGET_RESOURCES_SCHEMA
    )
    backend: StrictStr | None = Field(default=None, min_length=1, max_length=32)
    precision: StrictStr | None = Field(default=None, min_length=1, max_length=32)
    batch_size: int | None = Field(default=None, ge=1, le=256)
    num_threads: int | None = Field(default=None, ge=1, le=256)

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        return None if value is None else check_resource_amounts(value)


class TargetPublic(BaseModel):
    name: str
    description: str
    resources: dict[str, float]
    backend: str
    precision: str
    batch_size: int
    num_threads: int | None
    created_by: str
    created_at: datetime
    updated_at: datetime


class TargetsPublic(BaseModel):
    items: list[TargetPublic]


class BenchmarkRecordsPublic(BaseModel):
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int

    @classmethod
    def of(
        cls, records: list[Any], *, total: int, limit: int, offset: int
    ) -> BenchmarkRecordsPublic:
        import dataclasses

        items = [dataclasses.asdict(r) for r in records]
        return cls(items=items, total=total, limit=limit, offset=offset)
