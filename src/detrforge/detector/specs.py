"""Validated, frozen job specs (fine-tune, evaluate, benchmark), built once at the edge (API or CLI)
and consumed by the jobs; the sweep spec is in :mod:`detrforge.detector.sweep_specs`."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from detrforge.detector.sizes import (
    MODEL_SIZES,
    SEG_MODEL_SIZES,
    ModelSize,
    Task,
    check_resolution,
    default_resolution,
    task_of,
)
from detrforge.platform.errors import InvalidSpecError
from detrforge.platform.limits import MAX_INT, MAX_RESOURCE_AMOUNT, Name, Uri

__all__ = [
    "MAX_SEED",
    "PairedBaseline",
    "RESOURCE_AMOUNTS_SCHEMA",
    "Backend",
    "BenchmarkRequest",
    "BenchmarkSpec",
    "CheckpointChoice",
    "EvaluateRequest",
    "EvaluateSpec",
    "FinetuneSpec",
    "FrozenSpec",
    "SpecFieldError",
    "VariantArtifact",
    "check_task",
    "parse_spec",
]

SpecT = TypeVar("SpecT", bound=BaseModel)


def check_task(size: str, task: str | None) -> Task:
    """``task`` (default: the size's own), or a :class:`SpecFieldError` on ``task`` when the size
    cannot do it."""
    own = task_of(size)
    if task is None or task == own:
        return own
    if own == "detection":
        sizes = ", ".join(SEG_MODEL_SIZES)
        fix = f"choose a segmentation size ({sizes}) or task detection"
    else:
        fix = f"choose a detection size ({', '.join(MODEL_SIZES)}) or task segmentation"
    raise SpecFieldError("task", f"task: model size {size!r} is a {own} model, not {task}; {fix}")


class FrozenSpec(BaseModel):
    """A job spec: frozen, no unknown fields, strict types."""

    # Strict: a wrong JSON type is an error naming the field, never a coercion ("3" is not 3).
    # JSON ints still fill float fields. Specs rebuilt from stored JSON stay valid under it.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


# A seed numpy accepts (numpy's legacy seeding takes 32 bits).
MAX_SEED = 2**32 - 1
# Ray resources a request may name at once; real ones name two or three.
MAX_RESOURCE_NAMES = 32


# What check_resource_amounts admits, stated in the JSON schema of the fields it guards.
RESOURCE_AMOUNTS_SCHEMA: dict[str, Any] = {
    "maxProperties": MAX_RESOURCE_NAMES,
    # Printable (str.isprintable) is wider than a pattern can say; control characters are not.
    "propertyNames": {"minLength": 1, "maxLength": 128, "pattern": r"^[^\x00-\x1f\x7f-\x9f]*$"},
    "additionalProperties": {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": MAX_RESOURCE_AMOUNT,
    },
}


def check_resource_amounts(value: dict[str, float]) -> dict[str, float]:
    """``value`` if every quantity is finite, above 0 and at most ``MAX_RESOURCE_AMOUNT``."""
    if len(value) > MAX_RESOURCE_NAMES:
        raise ValueError(f"name at most {MAX_RESOURCE_NAMES} resources, not {len(value)}")
    for name, amount in value.items():
        if not 0 < len(name) <= 128 or not name.isprintable():
            raise ValueError(f"resource name {name[:130]!r} must be 1 to 128 printable characters")
        if not math.isfinite(amount) or not 0 < amount <= MAX_RESOURCE_AMOUNT:
            raise ValueError(
                f"resource {name!r} must be a finite number above 0 and at most "
                f"{MAX_RESOURCE_AMOUNT:.0f}, got {amount}"
            )
    return value


class FinetuneSpec(FrozenSpec):
    """Everything a fine-tune job needs; ``dataset`` is a local path or ``s3://`` prefix."""

    dataset: Uri
    model_size: ModelSize = "nano"
    task: Task | None = Field(
        default=None,
        description="detection or segmentation (masks); default: the model size's own (seg-* "
        "sizes segment). A segmentation dataset needs a mask on every object.",
    )
    resolution: int | None = Field(default=None, description="Input size; default: the size's own.")
    epochs: int = Field(default=10, ge=1, le=10_000)
    batch_size: int = Field(default=4, ge=1, le=1024)
    grad_accum_steps: int = Field(default=1, ge=1, le=1024)
    lr: float = Field(default=1e-4, gt=0, le=1.0)
    lr_encoder: float = Field(default=1.5e-4, gt=0, le=1.0)
    weight_decay: float = Field(default=1e-4, ge=0, le=1.0)
    use_ema: bool = True
    early_stopping: bool = False
    early_stopping_patience: int = Field(default=10, ge=1, le=10_000)
    early_stopping_min_delta: float = Field(default=0.001, ge=0, le=1.0)
    gradient_checkpointing: bool = False
    freeze_encoder_epochs: int = Field(default=0, ge=0, le=10_000)
    pretrain_weights: Uri | None = Field(
        default=None, description="Local path or s3:// URI of a .pth; none trains from scratch."
    )
    num_queries: int | None = Field(default=None, ge=1, le=3000)
    group_detr: int | None = Field(default=None, ge=1, le=64)
    num_workers: int = Field(default=1, ge=1, le=1024)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0}, json_schema_extra=RESOURCE_AMOUNTS_SCHEMA
    )
    threads_per_worker: int = Field(default=1, ge=1, le=256)
    seed: int = Field(default=42, ge=0, le=MAX_SEED)
    max_failures: int = Field(default=0, ge=-1, le=100)
    checkpoint_frequency: int = Field(
        default=1, ge=1, le=10_000, description="Checkpoint every N epochs."
    )
    num_checkpoints_to_keep: int = Field(default=2, ge=1, le=1000)
    dataloader_workers: int = Field(default=0, ge=0, le=64)

    @field_validator("resources_per_worker")
    @classmethod
    def _resources_positive(cls, value: dict[str, float]) -> dict[str, float]:
        return check_resource_amounts(value)

    @field_validator("pretrain_weights")
    @classmethod
    def _weights_uri(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(("http://", "https://", "hf://")):
            raise ValueError(
                "weights are never downloaded from the internet; give a local path or an "
                "s3:// URI of a .pth file"
            )
        return value

    @model_validator(mode="after")
    def _check_resolution(self) -> FinetuneSpec:
        object.__setattr__(self, "task", check_task(self.model_size, self.task))
        if self.resolution is None:
            object.__setattr__(self, "resolution", default_resolution(self.model_size))
        assert self.resolution is not None
        try:
            check_resolution(self.model_size, self.resolution)
        except ValueError as exc:
            raise SpecFieldError("resolution", str(exc)) from None
        if self.freeze_encoder_epochs >= self.epochs and self.freeze_encoder_epochs > 0:
            raise SpecFieldError(
                "freeze_encoder_epochs",
                f"freeze_encoder_epochs ({self.freeze_encoder_epochs}) must be smaller than "
                f"epochs ({self.epochs}), or the encoder is never unfrozen",
            )
        return self

    @property
    def res(self) -> int:
        """The resolution, never None after validation."""
        assert self.resolution is not None
        return self.resolution

    @property
    def segmentation(self) -> bool:
        """Whether this fine-tune trains masks (its dataset needs one on every object)."""
        return self.task == "segmentation"


class SpecFieldError(ValueError):
    """A cross-field validation error that knows which field to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def parse_spec(cls: type[SpecT], data: Any) -> SpecT:
    """Build ``cls`` from ``data``; raise ``InvalidSpecError`` naming the first bad field."""
    try:
        return cls.model_validate(data)
    except SpecFieldError as exc:
        raise InvalidSpecError(exc.message, field=exc.field) from None
    except ValidationError as exc:
        details = []
        for err in exc.errors():
            ctx_err = (err.get("ctx") or {}).get("error")
            field = ".".join(str(p) for p in err["loc"]) or None
            if isinstance(ctx_err, SpecFieldError):
                # A nested model's error is located under its parent (``baseline.resolution``).
                field = ".".join([*(str(p) for p in err["loc"]), ctx_err.field])
                message = ctx_err.message
            else:
                message = str(ctx_err) if ctx_err is not None else err["msg"]
                message = message.removeprefix("Value error, ")
            details.append({"field": field, "message": message})
        first = details[0]
        name, text = first["field"], str(first["message"])
        if name and not text.startswith(name):
            text = f"{name}: {text}"
        raise InvalidSpecError(text, field=first["field"], details=details) from None


Backend = Literal["torch", "onnxruntime"]
EVAL_BACKENDS = ("pycocotools", "faster")
Split = Literal["train", "valid", "test"]
Precision = Literal["fp32", "fp16", "bf16"]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Threads = Annotated[int, Field(ge=1, le=256)]
BatchSize = Annotated[int, Field(ge=1, le=256)]


# A variant's folder holds the file its runtime loads: model.onnx, or OpenVINO's model.xml.
VARIANT_FILE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class VariantArtifact(FrozenSpec):
    """A stored inference variant of the checkpoint (``detector.variants``), run instead of it:
    the folder ``<artifact root>/variants/<sha256>/``, the file in it a runtime loads, and the
    folder's content address, which the job checks before it loads anything. Set by the control
    layer from the variant store (a promotion's gate on a target that ships a variant), never
    taken from a request."""

    name: Name
    uri: Uri
    model_file: str = Field(pattern=VARIANT_FILE)
    sha256: Sha256

    def describe(self) -> str:
        return f"{self.name} {self.sha256[:12]}"


class _CheckpointSpec(FrozenSpec):
    """A trained checkpoint: its URI, model size and resolution (the API can fill them)."""

    checkpoint: Uri = Field(description="A .pth path, file:// or s3:// URI.")
    checkpoint_sha256: Sha256 | None = None
    model_size: ModelSize = "nano"
    task: Task | None = Field(default=None, description="Default: the model size's own.")
    resolution: int = Field(default=384)

    @model_validator(mode="after")
    def _check_resolution(self) -> _CheckpointSpec:
        object.__setattr__(self, "task", check_task(self.model_size, self.task))
        # Both backends run a segmentation model (its ONNX export has a masks output), but the
        # optimized variants (onnx-opt, onnx-int8, openvino-*) are built for detection only.
        if self.task == "segmentation" and getattr(self, "variant", None) is not None:
            raise SpecFieldError(
                "variant",
                "variant: segmentation models have no optimized variants yet; run the checkpoint "
                "itself with backend torch or onnxruntime",
            )
        try:
            check_resolution(self.model_size, self.resolution)
        except ValueError as exc:
            raise SpecFieldError("resolution", str(exc)) from None
        return self


class CheckpointChoice(FrozenSpec):
    """The weights a request names: a checkpoint URI, or a SUCCEEDED fine-tune job's model.

    The control layer resolves it into a spec's checkpoint fields; size and resolution given here
    win over the job's (measuring a model at another resolution is a request of its own).
    """

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["checkpoint"]}, {"required": ["job_id"]}]}
    )

    checkpoint: Uri | None = Field(default=None, description="A .pth path, file:// or s3:// URI.")
    job_id: Name | None = Field(
        default=None,
        description="A SUCCEEDED fine-tune job whose model to use instead of `checkpoint`.",
    )
    checkpoint_sha256: Sha256 | None = None
    model_size: ModelSize | None = Field(default=None, description="Default: the job's, or nano.")
    resolution: int | None = Field(default=None, description="Default: the job's, or 384.")

    @model_validator(mode="after")
    def _one_source(self) -> CheckpointChoice:
        if (self.checkpoint is None) == (self.job_id is None):
            raise SpecFieldError(
                "checkpoint",
                "checkpoint: give exactly one of checkpoint (a checkpoint URI) and job_id (a "
                "SUCCEEDED fine-tune job)",
            )
        return self


class _EvaluateFields(FrozenSpec):
    dataset: Uri
    split: Split = "valid"
    backend: Backend = "torch"
    eval_backend: Literal["pycocotools", "faster"] = "pycocotools"
    num_threads: Threads | None = None


class EvaluateSpec(_CheckpointSpec, _EvaluateFields):
    """COCO bbox AP of a checkpoint on one split of a dataset (of its variant, when set)."""

    variant: VariantArtifact | None = None


class EvaluateRequest(CheckpointChoice, _EvaluateFields):
    """What ``POST /evaluations`` accepts; the control layer turns it into an EvaluateSpec."""


class PairedBaseline(_CheckpointSpec):
    """The baseline arm of a paired benchmark: timed in the same process as the candidate."""

    model_version: int | None = Field(default=None, ge=1, le=MAX_INT)


class _BenchmarkFields(FrozenSpec):
    target: Name
    warmup: int = Field(default=5, ge=0, le=10_000)
    runs: int = Field(
        default=50, ge=1, le=100_000, description="Timed runs (per arm and round when paired)."
    )
    baseline: PairedBaseline | None = Field(
        default=None,
        description="Time this checkpoint too, interleaved with the candidate in one process "
        "(a paired A/B), and report the p50/p95/p99 ratios with confidence intervals.",
    )
    max_ratio: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="With a baseline: the p95 ratio limit the verdict is taken against; an "
        "inconclusive interval measures another round, up to max_rounds.",
    )
    confidence: float = Field(default=0.95, ge=0.5, le=0.999)
    max_rounds: int = Field(default=1, ge=1, le=10)
    inter_run_sleep_ms: float = Field(default=0.0, ge=0, le=60_000)
    dataset: Uri | None = Field(
        default=None, description="Images to time (its split); default: synthetic images."
    )
    split: Split = "valid"
    evaluate: bool = Field(default=False, description="Also measure AP on the split (A/B).")
    model_name: Name | None = Field(default=None, description="Registry model, for the history.")
    model_version: int | None = Field(default=None, ge=1, le=MAX_INT)

    @model_validator(mode="after")
    def _paired_options(self) -> _BenchmarkFields:
        if self.max_ratio is not None and self.baseline is None:
            raise SpecFieldError(
                "max_ratio", "max_ratio: a ratio needs a baseline; set baseline.checkpoint"
            )
        if self.max_rounds > 1 and self.max_ratio is None:
            raise SpecFieldError(
                "max_rounds", "max_rounds: more rounds are taken only against a max_ratio; set it"
            )
        if self.baseline is not None and getattr(self, "batch_size", 1) not in (None, 1):
            raise SpecFieldError("batch_size", "batch_size: a paired benchmark times batch size 1")
        return self


class BenchmarkSpec(_CheckpointSpec, _BenchmarkFields):
    """Latency of a checkpoint on a named hardware target (filled in from the target's profile)."""

    target_resources: dict[str, float] = Field(
        default_factory=dict, json_schema_extra=RESOURCE_AMOUNTS_SCHEMA
    )
    backend: Backend = "torch"
    precision: Precision = "fp32"
    batch_size: BatchSize = 1
    num_threads: Threads | None = None
    # Run these stored variants instead of the checkpoints (candidate; baseline arm).
    variant: VariantArtifact | None = None
    baseline_variant: VariantArtifact | None = None

    @field_validator("target_resources")
    @classmethod
    def _resources_positive(cls, value: dict[str, float]) -> dict[str, float]:
        return check_resource_amounts(value)


class BenchmarkRequest(CheckpointChoice, _BenchmarkFields):
    """What ``POST /benchmarks`` accepts: the target's profile fills what is left out."""

    backend: Backend | None = Field(default=None, description="Default: the target's.")
    precision: Precision | None = Field(default=None, description="Default: the target's.")
    batch_size: BatchSize | None = Field(default=None, description="Default: the target's.")
    num_threads: Threads | None = Field(default=None, description="Default: the target's.")
