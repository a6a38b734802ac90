"""Validated, frozen job specs, built once at the edge (API or CLI) and consumed by the jobs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from detrforge.platform.errors import InvalidSpecError

__all__ = [
    "MODEL_SIZES",
    "BenchmarkSpec",
    "EvaluateSpec",
    "FinetuneSpec",
    "ModelSize",
    "check_resolution",
    "nearest_resolutions",
    "parse_spec",
]

ModelSize = Literal["nano", "small", "medium", "large"]

# size -> (default resolution, patch size x windows: what the resolution must divide by)
MODEL_SIZES: dict[str, tuple[int, int]] = {
    "nano": (384, 32),
    "small": (512, 32),
    "medium": (576, 32),
    "large": (704, 32),
}
MIN_RESOLUTION = 64
MAX_RESOLUTION = 2048


def nearest_resolutions(resolution: int, multiple: int) -> list[int]:
    """The valid resolutions closest to ``resolution`` (one or two values, ascending)."""
    lower = max(MIN_RESOLUTION, (resolution // multiple) * multiple)
    upper = min(MAX_RESOLUTION, lower + multiple)
    return sorted({lower, upper})


def check_resolution(size: str, resolution: int) -> None:
    """Raise ``ValueError`` naming the nearest valid values if ``resolution`` cannot work."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(MODEL_SIZES)}")
    multiple = MODEL_SIZES[size][1]
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(
            f"resolution {resolution} is out of range; use a multiple of {multiple} "
            f"between {MIN_RESOLUTION} and {MAX_RESOLUTION}"
        )
    if resolution % multiple:
        near = " or ".join(str(r) for r in nearest_resolutions(resolution, multiple))
        raise ValueError(
            f"resolution {resolution} is not divisible by {multiple} (patch size 16 x 2 windows "
            f"for RF-DETR {size}); use {near}"
        )


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FinetuneSpec(_Spec):
    """Everything a fine-tune job needs; ``dataset`` is a local path or ``s3://`` prefix."""

    dataset: str = Field(min_length=1)
    model_size: ModelSize = "nano"
    resolution: int | None = Field(default=None, description="Input size; default: the size's own.")
    epochs: int = Field(default=10, ge=1, le=10_000)
    batch_size: int = Field(default=4, ge=1, le=1024)
    grad_accum_steps: int = Field(default=1, ge=1, le=1024)
    lr: float = Field(default=1e-4, gt=0, le=1.0)
    lr_encoder: float = Field(default=1.5e-4, gt=0, le=1.0)
    weight_decay: float = Field(default=1e-4, ge=0, le=1.0)
    use_ema: bool = True
    early_stopping: bool = False
    early_stopping_patience: int = Field(default=10, ge=1)
    early_stopping_min_delta: float = Field(default=0.001, ge=0)
    gradient_checkpointing: bool = False
    freeze_encoder_epochs: int = Field(default=0, ge=0)
    pretrain_weights: str | None = Field(
        default=None, description="Local path or s3:// URI of a .pth; none trains from scratch."
    )
    num_queries: int | None = Field(default=None, ge=1, le=3000)
    group_detr: int | None = Field(default=None, ge=1, le=64)
    num_workers: int = Field(default=1, ge=1, le=1024)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
    threads_per_worker: int = Field(default=1, ge=1, le=256)
    seed: int = 42
    max_failures: int = Field(default=0, ge=-1, le=100)
    checkpoint_frequency: int = Field(default=1, ge=1, description="Checkpoint every N epochs.")
    num_checkpoints_to_keep: int = Field(default=2, ge=1)
    dataloader_workers: int = Field(default=0, ge=0, le=64)

    @field_validator("resources_per_worker")
    @classmethod
    def _resources_positive(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if amount < 0:
                raise ValueError(f"resource {name!r} must be >= 0, got {amount}")
        return value

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
        if self.resolution is None:
            object.__setattr__(self, "resolution", MODEL_SIZES[self.model_size][0])
        assert self.resolution is not None
        try:
            check_resolution(self.model_size, self.resolution)
        except ValueError as exc:
            raise _FieldError("resolution", str(exc)) from None
        if self.freeze_encoder_epochs >= self.epochs and self.freeze_encoder_epochs > 0:
            raise _FieldError(
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


class _FieldError(ValueError):
    """A cross-field validation error that knows which field to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def parse_spec(cls: type[_Spec], data: Any) -> Any:
    """Build ``cls`` from ``data``; raise ``InvalidSpecError`` naming the first bad field."""
    try:
        return cls.model_validate(data)
    except _FieldError as exc:
        raise InvalidSpecError(exc.message, field=exc.field) from None
    except ValidationError as exc:
        details = []
        for err in exc.errors():
            ctx_err = (err.get("ctx") or {}).get("error")
            field = ".".join(str(p) for p in err["loc"]) or None
            if isinstance(ctx_err, _FieldError):
                field, message = ctx_err.field, ctx_err.message
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


class _CheckpointSpec(_Spec):
    """A trained checkpoint: its URI, model size and resolution (the API can fill them)."""

    checkpoint: str = Field(min_length=1, description="A .pth path, file:// or s3:// URI.")
    checkpoint_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    model_size: ModelSize = "nano"
    resolution: int = Field(default=384)

    @model_validator(mode="after")
    def _check_resolution(self) -> _CheckpointSpec:
        try:
            check_resolution(self.model_size, self.resolution)
        except ValueError as exc:
            raise _FieldError("resolution", str(exc)) from None
        return self


class EvaluateSpec(_CheckpointSpec):
    """COCO bbox AP of a checkpoint on one split of a dataset."""

    dataset: str = Field(min_length=1)
    split: Literal["train", "valid", "test"] = "valid"
    backend: Backend = "torch"
    eval_backend: Literal["pycocotools", "faster"] = "pycocotools"
    num_threads: int | None = Field(default=None, ge=1, le=256)


class BenchmarkSpec(_CheckpointSpec):
    """Latency of a checkpoint on a named hardware target (filled in from the target's profile)."""

    target: str = Field(min_length=1)
    target_resources: dict[str, float] = Field(default_factory=dict)
    backend: Backend = "torch"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    batch_size: int = Field(default=1, ge=1, le=256)
    warmup: int = Field(default=5, ge=0, le=10_000)
    runs: int = Field(default=50, ge=1, le=100_000)
    inter_run_sleep_ms: float = Field(default=0.0, ge=0, le=60_000)
    num_threads: int | None = Field(default=None, ge=1, le=256)
    dataset: str | None = Field(
        default=None, description="Images to time (its split); default: synthetic images."
    )
    split: Literal["train", "valid", "test"] = "valid"
    evaluate: bool = Field(default=False, description="Also measure AP on the split (A/B).")
