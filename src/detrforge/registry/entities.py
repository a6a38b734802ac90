"""Frozen domain entities the registry stores return: never ORM rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

__all__ = [
    "ApiKey",
    "AuditEvent",
    "BenchmarkRecord",
    "GateResult",
    "HardwareTarget",
    "Job",
    "JobState",
    "Lease",
    "ModelVersion",
    "Promotion",
    "Principal",
    "PromotionState",
    "RegisteredModel",
    "Role",
    "Stage",
    "SystemPrincipal",
    "VersionVariant",
]


class JobState(StrEnum):
    """Life cycle of a job; ``SUCCEEDED``, ``FAILED`` and ``CANCELLED`` are final."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_STATES


_TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Role(StrEnum):
    """What an API key may do; each role includes everything the roles below it may do.

    Roles compare by rank, not alphabetically: ``Role.operator >= Role.viewer``.
    """

    viewer = "viewer"
    operator = "operator"
    approver = "approver"
    admin = "admin"

    @property
    def rank(self) -> int:
        return _ROLE_ORDER.index(self)

    def allows(self, required: Role) -> bool:
        """Whether a key with this role may do what ``required`` may."""
        return self.rank >= Role(required).rank

    # str's own comparisons are alphabetical ("admin" < "viewer"), hence these overrides.
    # Plain strings are accepted when they name a role, so they cannot fall back to str order.
    def _other_rank(self, other: object) -> int | None:
        if isinstance(other, Role):
            return other.rank
        if isinstance(other, str):
            return Role(other).rank
        return None

    def __lt__(self, other: object) -> bool:
        rank = self._other_rank(other)
        return NotImplemented if rank is None else self.rank < rank

    def __le__(self, other: object) -> bool:
        rank = self._other_rank(other)
        return NotImplemented if rank is None else self.rank <= rank

    def __gt__(self, other: object) -> bool:
        rank = self._other_rank(other)
        return NotImplemented if rank is None else self.rank > rank

    def __ge__(self, other: object) -> bool:
        rank = self._other_rank(other)
        return NotImplemented if rank is None else self.rank >= rank


_ROLE_ORDER = (Role.viewer, Role.operator, Role.approver, Role.admin)


@dataclass(frozen=True, slots=True)
class Job:
    """A job the platform launched on the cluster, as the registry last recorded it."""

    id: str
    kind: str
    state: JobState
    spec: dict[str, Any]
    created_by: str
    dataset_fingerprint: str | None
    created_at: datetime
    updated_at: datetime
    ray_submission_id: str | None = None
    mlflow_run_id: str | None = None
    error: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint_uri: str | None = None
    model_uri: str | None = None
    model_sha256: str | None = None  # of model_uri
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal


class Principal(Protocol):
    """Whoever acts: an API key, or the platform itself (e.g. ``promotion:prm-...``)."""

    @property
    def principal(self) -> str: ...


@dataclass(frozen=True, slots=True)
class SystemPrincipal:
    """The platform acting on its own behalf, e.g. the jobs a promotion submits."""

    name: str

    @property
    def principal(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key's record; the key itself is never stored, only its sha256 and a prefix."""

    id: str
    name: str
    role: Role
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def principal(self) -> str:
        """Who acted, as audit records name it."""
        return f"key:{self.name}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class HardwareTarget:
    """A named hardware profile a benchmark runs on.

    ``resources`` is the Ray resource request of ONE benchmark task: Ray schedules the task onto a
    node that offers it (e.g. ``{"accelerator_type:T4": 0.001, "GPU": 1.0}``), which is what makes
    the benchmark run on that hardware.
    """

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


@dataclass(frozen=True, slots=True)
class BenchmarkRecord:
    """One measured latency of one checkpoint on one hardware target: an append-only fact.

    The target's name, resources, backend and precision are copied in, so a record stays
    meaningful after its target is changed or deleted. ``p*_ms``/``mean_ms``/``std_ms``/``min_ms``/
    ``max_ms`` time the forward pass alone; ``e2e_*`` time decode + preprocess + forward +
    postprocess of one batch. ``environment`` holds the version pins (detrforge, rfdetr, torch,
    torchvision, onnxruntime, python, os, cpu_model, cpu_count, cuda, cudnn, driver, gpu_name,
    gpu_memory_mb, ...) as JSON scalars.
    """

    id: str
    job_id: str
    created_at: datetime
    model_name: str | None
    model_version: int | None
    checkpoint_uri: str
    checkpoint_sha256: str
    model_size: str
    target: str
    target_resources: dict[str, float]
    node_id: str | None
    backend: str
    precision: str
    resolution: int
    batch_size: int
    warmup: int
    runs: int
    threads: int | None
    device: str | None
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    e2e_p50_ms: float | None
    e2e_p95_ms: float | None
    e2e_p99_ms: float | None
    images_per_s: float
    environment: dict[str, Any]
    mlflow_run_id: str | None
    dataset_fingerprint: str | None
    # A paired A/B (``jobs.benchmark`` with a baseline): both arms' figures and raw samples, the
    # p50/p95/p99 ratios with their intervals, the rounds taken and the verdict. None: one arm.
    paired: dict[str, Any] | None = None
    # The node's load average and busiest other processes during the measurement.
    node_load: dict[str, Any] | None = None
    # A segmentation model's mask decoding (upsample to the image, threshold): its p50/p95/p99,
    # apart from the model (``p*_ms``) and inside end to end; None for a detection model.
    mask_p50_ms: float | None = None
    mask_p95_ms: float | None = None
    mask_p99_ms: float | None = None


class Stage(StrEnum):
    """Where a model version is in its life: ``none -> staging -> production -> archived``.

    At most one version per model is in ``staging`` and at most one in ``production``; the
    database enforces it with unique partial indexes, not only this code.
    """

    none = "none"
    staging = "staging"
    production = "production"
    archived = "archived"


class PromotionState(StrEnum):
    """``pending -> running -> applied | failed``; only one promotion per model is active."""

    pending = "pending"
    running = "running"
    applied = "applied"
    failed = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (PromotionState.applied, PromotionState.failed)


ACTIVE_PROMOTION_STATES = (PromotionState.pending, PromotionState.running)


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    """A named model whose versions move through stages under a gate policy."""

    id: str
    name: str
    description: str
    created_by: str
    created_at: datetime
    updated_at: datetime
    policy: dict[str, Any] | None = None
    policy_updated_by: str | None = None
    policy_updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One registered checkpoint of a model, with its lineage and its stage.

    ``replaced_version`` is the production version this one replaced when it last became
    production: rollback returns to it.
    """

    id: str
    model_name: str
    version: int
    stage: Stage
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
    replaced_version: int | None = None


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate check of a promotion: what was compared, against what, and the verdict."""

    gate: str
    metric: str
    candidate: float | None
    baseline: float | None
    threshold: float | None
    passed: bool
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)
    target: str | None = None


@dataclass(frozen=True, slots=True)
class Promotion:
    """A request to move a version to ``staging`` or ``production``, and what became of it.

    ``evidence`` lists the evaluation and benchmark jobs (or reused records) the gates read;
    ``baseline_version`` is the production version the candidate was compared with.
    """

    id: str
    model_name: str
    version: int
    from_stage: Stage
    to_stage: Stage
    state: PromotionState
    actor: str
    reason: str
    request_id: str | None
    baseline_version: int | None
    evidence: list[dict[str, Any]]
    message: str | None
    gate_results: list[GateResult]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """Who advances a promotion: the API replica ``owner``, until ``expires_at`` unless renewed."""

    promotion_id: str
    owner: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """An append-only record of one action: who, when, what, on which model and version."""

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
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VersionVariant:
    """A built inference variant of a model version: its content-addressed artifact and recipe.

    ``artifact_uri`` is the folder ``<artifact root>/variants/<sha256>/``; ``model_file`` the
    file in it a runtime loads. ``metrics`` holds what was measured of it (latency, AP).
    """

    id: str
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
