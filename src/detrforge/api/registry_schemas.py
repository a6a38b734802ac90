"""Request and response bodies of the registry routes (models, versions, promotions, audit)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from detrforge.control.versions import VersionRequest
from detrforge.detector.sizes import MAX_RESOLUTION, MIN_RESOLUTION, ModelSize
from detrforge.detector.specs import parse_spec
from detrforge.platform.errors import InvalidSpecError
from detrforge.platform.limits import (
    MAX_NAME_LENGTH,
    ClassNames,
    Description,
    Name,
    Reason,
    Uri,
    parse_reason,
)
from detrforge.registry.gates import GatePolicy
from detrforge.registry.models import MODEL_NAME_PATTERN

__all__ = [
    "AuditEventPublic",
    "AuditEventsPublic",
    "GateResultPublic",
    "ModelCreate",
    "ModelPublic",
    "ModelsPublic",
    "PromotionCreate",
    "PromotionPublic",
    "PromotionsPublic",
    "RollbackCreate",
    "TrialRegister",
    "VersionCreate",
    "VariantPublic",
    "VariantsPublic",
    "VersionPublic",
    "VersionsPublic",
    "parse_policy",
]


class _FromEntity(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class _Request(BaseModel):
    """A request body: a wrong JSON type is a 422 naming the field, never a coercion."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class ModelCreate(_Request):
    # The registry's own rule (MODEL_NAME_PATTERN), stated in the schema: no control characters.
    name: StrictStr = Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=f"^{MODEL_NAME_PATTERN.pattern}$",
        examples=["shelf-detector"],
    )
    description: Description = ""


class VersionCreate(_Request):
    """A version from ``job_id`` (a SUCCEEDED fine-tune) or ``checkpoint`` + size + resolution."""

    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": ["job_id"]}, {"required": ["checkpoint"]}]}
    )

    job_id: Name | None = None
    checkpoint: Uri | None = Field(default=None, description="A .pth path, file:// or s3:// URI.")
    checkpoint_sha256: StrictStr | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    model_size: ModelSize | None = None
    resolution: int | None = Field(default=None, ge=MIN_RESOLUTION, le=MAX_RESOLUTION)
    class_names: ClassNames | None = None
    description: Description = ""

    def to_request(self) -> VersionRequest:
        """The validated body as the control layer takes it."""
        return VersionRequest(
            job_id=self.job_id,
            checkpoint=self.checkpoint,
            checkpoint_sha256=self.checkpoint_sha256,
            model_size=self.model_size,
            resolution=self.resolution,
            class_names=tuple(self.class_names or ()),
            description=self.description,
        )


def parse_policy(body: object) -> tuple[GatePolicy, str | None]:
    """A ``PUT .../policy`` body: the gate policy and the ``reason`` sent along with it.

    Parsed by hand rather than as a route model so a bad field is named the way every spec
    names it (``parse_spec``).
    """
    if not isinstance(body, dict):
        raise InvalidSpecError("the policy must be a JSON object", field=None)
    fields = dict(body)
    reason = parse_reason(fields.pop("reason", None))
    return parse_spec(GatePolicy, fields), reason


class ModelPublic(_FromEntity):
    id: str
    name: str
    description: str
    created_by: str
    created_at: datetime
    updated_at: datetime
    policy: dict[str, Any] | None
    policy_updated_by: str | None
    policy_updated_at: datetime | None
    production_version: int | None = None
    staging_version: int | None = None


class ModelsPublic(BaseModel):
    items: list[ModelPublic]
    total: int
    limit: int
    offset: int


class VersionPublic(_FromEntity):
    model_name: str
    version: int
    stage: str
    checkpoint_uri: str
    checkpoint_sha256: str
    checkpoint_bytes: int
    model_size: str
    resolution: int
    class_names: list[str]
    dataset_fingerprint: str | None
    params: dict[str, Any]
    source_job_id: str | None
    source_trial_id: str | None
    mlflow_run_id: str | None
    mlflow_version: str | None
    description: str
    created_by: str
    created_at: datetime
    stage_changed_at: datetime
    replaced_version: int | None


class VersionsPublic(BaseModel):
    items: list[VersionPublic]


class GateResultPublic(_FromEntity):
    gate: str
    target: str | None
    metric: str
    candidate: float | None
    baseline: float | None
    threshold: float | None
    passed: bool
    detail: str
    evidence: dict[str, Any]


class PromotionCreate(_Request):
    to: Literal["staging", "production"] = "production"
    reason: Reason = ""


class PromotionPublic(_FromEntity):
    id: str
    model_name: str
    version: int
    from_stage: str
    to_stage: str
    state: str
    actor: str
    reason: str
    request_id: str | None
    baseline_version: int | None
    evidence: list[dict[str, Any]]
    message: str | None
    gate_results: list[GateResultPublic]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class PromotionsPublic(BaseModel):
    items: list[PromotionPublic]


class TrialRegister(_Request):
    model: Name = Field(description="The registered model to add the version to.")
    description: Description = ""


class RollbackCreate(_Request):
    reason: Reason = ""


class AuditEventPublic(_FromEntity):
    id: int
    at: datetime
    actor: str
    action: str
    model_name: str | None
    version: int | None
    before: str | None
    after: str | None
    reason: str | None
    request_id: str | None
    details: dict[str, Any]


class AuditEventsPublic(BaseModel):
    items: list[AuditEventPublic]
    total: int
    limit: int
    offset: int


class VariantPublic(_FromEntity):
    """A built inference variant: where its artifact is, its sha256 and how it was built."""

    model_name: str
    version: int
    name: str
    runtime: str
    precision: str
    artifact_uri: str
    model_file: str
    sha256: str
    size_bytes: int
    build_seconds: float
    recipe: dict[str, Any]
    metrics: dict[str, Any]
    created_by: str
    created_at: datetime


class VariantsPublic(BaseModel):
    items: list[VariantPublic]


class AliasPublic(VersionPublic):
    """The version an alias points at, and the artifact to deploy from it: on a ``target`` whose
    gate ships a variant, that variant's folder (``model_file`` in it); else the checkpoint."""

    target: str | None
    variant: str | None
    artifact_uri: str
    artifact_sha256: str
    model_file: str | None
