"""Validated, frozen job specs, built once at the edge (API or CLI) and consumed by the jobs."""

from __future__ import annotations

import math
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from detrforge.platform.errors import InvalidSpecError
from detrforge.platform.limits import MAX_INT, MAX_RESOURCE_AMOUNT, Name, Uri

__all__ = [
    "MODEL_SIZES",
    "RESOURCE_AMOUNTS_SCHEMA",
    "BenchmarkSpec",
    "EvaluateSpec",
    "FinetuneSpec",
    "ModelSize",
    "ParamRange",
    "SweepScheduler",
    "SweepSpec",
    "TrialResources",
    "check_resolution",
    "nearest_resolutions",
    "parse_spec",
]

SpecT = TypeVar("SpecT", bound=BaseModel)

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


class FinetuneSpec(_Spec):
    """Everything a fine-tune job needs; ``dataset`` is a local path or ``s3://`` prefix."""

    dataset: Uri
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


def parse_spec(cls: type[SpecT], data: Any) -> SpecT:
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

    checkpoint: Uri = Field(description="A .pth path, file:// or s3:// URI.")
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

    dataset: Uri
    split: Literal["train", "valid", "test"] = "valid"
    backend: Backend = "torch"
    eval_backend: Literal["pycocotools", "faster"] = "pycocotools"
    num_threads: int | None = Field(default=None, ge=1, le=256)


class BenchmarkSpec(_CheckpointSpec):
    """Latency of a checkpoint on a named hardware target (filled in from the target's profile)."""

    target: Name
    target_resources: dict[str, float] = Field(
        default_factory=dict, json_schema_extra=RESOURCE_AMOUNTS_SCHEMA
    )
    backend: Backend = "torch"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    batch_size: int = Field(default=1, ge=1, le=256)
    warmup: int = Field(default=5, ge=0, le=10_000)
    runs: int = Field(default=50, ge=1, le=100_000)
    inter_run_sleep_ms: float = Field(default=0.0, ge=0, le=60_000)
    num_threads: int | None = Field(default=None, ge=1, le=256)
    dataset: Uri | None = Field(
        default=None, description="Images to time (its split); default: synthetic images."
    )
    split: Literal["train", "valid", "test"] = "valid"
    evaluate: bool = Field(default=False, description="Also measure AP on the split (A/B).")
    model_name: Name | None = Field(default=None, description="Registry model, for the history.")
    model_version: int | None = Field(default=None, ge=1, le=MAX_INT)

    @field_validator("target_resources")
    @classmethod
    def _resources_positive(cls, value: dict[str, float]) -> dict[str, float]:
        return check_resource_amounts(value)


# -- sweeps ------------------------------------------------------------------------------------

# FinetuneSpec fields a sweep sets itself (one worker per trial, the sweep's seed and resources).
_SWEEP_OWNED = frozenset(
    {
        "dataset",
        "num_workers",
        "use_gpu",
        "resources_per_worker",
        "seed",
        "max_failures",
        "checkpoint_frequency",
        "num_checkpoints_to_keep",
    }
)
SWEEP_TUNABLE = tuple(f for f in FinetuneSpec.model_fields if f not in _SWEEP_OWNED)
_MAX_CHECKED_COMBINATIONS = 512


class ParamRange(_Spec):
    """A continuous (or whole-number) range for random search: ``[low, high]``."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> ParamRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class SweepScheduler(_Spec):
    """``asha`` stops weak trials at rungs (grace x reduction factor^k); ``none`` runs all."""

    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(
        default=1, ge=1, le=10_000, description="Epochs before ASHA may stop a trial."
    )
    reduction_factor: float = Field(default=2.0, gt=1.0, le=100.0)
    max_epochs: int | None = Field(
        default=None, ge=1, le=10_000, description="ASHA's max_t; default: the largest epochs."
    )


class TrialResources(_Spec):
    """What Ray reserves for one trial (one training process): fractional CPUs, GPUs."""

    cpu: float = Field(default=1.0, gt=0, le=1024)
    gpu: float = Field(default=0.0, ge=0, le=64)


def _optuna_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("optuna") is not None


class SweepSpec(_Spec):
    """A Ray Tune search over fine-tune configurations, each trial measured on ``target``.

    ``space`` maps FinetuneSpec fields to a list of choices or a ``ParamRange`` (random search
    only); ``base`` fixes other fine-tune fields for every trial.
    """

    dataset: Uri
    space: dict[str, Any] = Field(
        default_factory=lambda: {"model_size": ["nano"]},
        json_schema_extra={"propertyNames": {"enum": list(SWEEP_TUNABLE)}},
    )
    base: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"enum": list(SWEEP_TUNABLE)}}
    )
    num_samples: int = Field(
        default=1, ge=1, le=10_000, description="Random: trials; grid: repeats of the grid."
    )
    scheduler: SweepScheduler = Field(default_factory=SweepScheduler)
    search: Literal["grid", "random", "optuna"] = "grid"
    target: Name = Field(description="The hardware target p95 is measured on.")
    target_resources: dict[str, float] = Field(
        default_factory=dict, json_schema_extra=RESOURCE_AMOUNTS_SCHEMA
    )
    backend: Backend = "torch"
    bench_threads: int | None = Field(default=None, ge=1, le=256)
    bench_warmup: int = Field(default=3, ge=0, le=10_000)
    bench_runs: int = Field(default=20, ge=1, le=100_000)
    latency_sla_ms: float | None = Field(default=None, gt=0, le=3_600_000)
    max_concurrent_trials: int = Field(default=2, ge=1, le=1024)
    resources_per_trial: TrialResources = Field(default_factory=TrialResources)
    seed: int = Field(default=42, ge=0, le=MAX_SEED)

    @field_validator("target_resources")
    @classmethod
    def _resources_positive(cls, value: dict[str, float]) -> dict[str, float]:
        return check_resource_amounts(value)

    @model_validator(mode="after")
    def _check_sweep(self) -> SweepSpec:
        if self.search == "optuna" and not _optuna_installed():
            raise _FieldError(
                "search",
                "search 'optuna' needs the optuna package, which is not installed on the server; "
                "use 'grid' or 'random' (or install optuna)",
            )
        for key in self.base:
            if key in _SWEEP_OWNED or key not in FinetuneSpec.model_fields:
                raise _FieldError(
                    f"base.{key}",
                    f"base.{key} cannot be set for a sweep trial; settable fields: "
                    f"{', '.join(SWEEP_TUNABLE)}",
                )
            if key in self.space:
                raise _FieldError(f"base.{key}", f"{key} is both in base and in space; keep one")
        self._validate(self.base, "base")
        sizes = self._sizes()
        for key, value in self.space.items():
            self._check_dimension(key, value, sizes)
        self._check_combinations()
        max_t = self.max_epochs
        if self.scheduler.type == "asha" and self.scheduler.grace_period > max_t:
            raise _FieldError(
                "scheduler.grace_period",
                f"grace_period ({self.scheduler.grace_period}) exceeds the trials' max epochs "
                f"({max_t}); ASHA could never stop a trial",
            )
        return self

    # -- validation helpers ---------------------------------------------------------------
    def _sizes(self) -> list[str]:
        sizes = self.space.get("model_size", [self.base.get("model_size", "nano")])
        if not isinstance(sizes, list) or not sizes:
            raise _FieldError("space.model_size", "space.model_size: give at least one size")
        for size in sizes:
            # A non-string (a list, an object) is no size, and unhashable for the lookup.
            if not isinstance(size, str) or size not in MODEL_SIZES:
                raise _FieldError(
                    "space.model_size",
                    f"unknown model size {size!r}; choose from {', '.join(MODEL_SIZES)}",
                )
        return [str(s) for s in sizes]

    def _check_dimension(self, key: str, value: Any, sizes: list[str]) -> None:
        field = f"space.{key}"
        if key not in SWEEP_TUNABLE:
            raise _FieldError(
                field, f"cannot search over {key!r}; searchable fields: {', '.join(SWEEP_TUNABLE)}"
            )
        if isinstance(value, dict):
            if self.search == "grid":
                raise _FieldError(
                    field, f"{field}: grid search needs a list of choices, not a range"
                )
            if key in ("model_size", "resolution"):
                raise _FieldError(field, f"{field}: give a list of choices, not a range")
            try:
                rng = ParamRange.model_validate(value)
            except ValidationError as exc:
                message = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise _FieldError(field, f"{field}: {message}") from None
            # A range's ends are floats by ParamRange's type; whole ones may fill int fields.
            self._validate({key: rng.low}, field, strict=False)
            self._validate({key: rng.high}, field, strict=False)
            return
        if not isinstance(value, list):
            raise _FieldError(field, f"{field}: give a list of choices or a range object")
        if not value:
            raise _FieldError(field, f"{field}: the list of choices is empty; give at least one")
        if key == "resolution":
            for res in value:
                if isinstance(res, bool) or not isinstance(res, int):
                    raise _FieldError(field, f"{field}: {res!r} is not a whole number of pixels")
                for size in sizes:
                    try:
                        check_resolution(size, res)
                    except ValueError as exc:
                        raise _FieldError(field, f"{field}: {exc}") from None
            return
        if key == "model_size":
            return
        for choice in value:
            self._validate({key: choice}, field)

    def _validate(self, fields: dict[str, Any], field: str, *, strict: bool = True) -> None:
        try:
            FinetuneSpec.model_validate(
                {"dataset": self.dataset, **self.base, **fields}, strict=strict
            )
        except (ValidationError, _FieldError) as exc:
            if isinstance(exc, _FieldError):
                message = exc.message
            else:
                err = exc.errors()[0]
                ctx_err = (err.get("ctx") or {}).get("error")
                message = getattr(ctx_err, "message", None) or str(err["msg"])
                message = message.removeprefix("Value error, ")
            raise _FieldError(field, f"{field}: {message}") from None

    def _check_combinations(self) -> None:
        import itertools

        dims: list[tuple[str, list[Any]]] = []
        for key, value in self.space.items():
            if isinstance(value, dict):
                value = [value["low"], value["high"]]
                if ParamRange.model_validate(self.space[key]).integer:
                    value = [int(v) for v in value]
            dims.append((key, value))
        total = 1
        for _, values in dims:
            total *= len(values)
        if total > _MAX_CHECKED_COMBINATIONS:
            return
        for combo in itertools.product(*(values for _, values in dims)):
            self._validate(dict(zip((k for k, _ in dims), combo, strict=True)), "space")

    # -- what the job uses ------------------------------------------------------------------
    @property
    def max_epochs(self) -> int:
        """ASHA's ``max_t``: the scheduler's, else the largest epochs any trial can have."""
        if self.scheduler.max_epochs is not None:
            return self.scheduler.max_epochs
        epochs = self.space.get("epochs")
        if isinstance(epochs, list):
            return int(max(epochs))
        if isinstance(epochs, dict):
            return int(epochs["high"])
        return int(self.base.get("epochs", FinetuneSpec.model_fields["epochs"].default))

    def trial_spec(self, config: dict[str, Any]) -> FinetuneSpec:
        """The fine-tune spec of one trial: base fields, the sampled ``config``, one worker."""
        fields: dict[str, Any] = {"epochs": self.max_epochs, **self.base, **config}
        for key, value in config.items():
            rng = self.space.get(key)
            if isinstance(rng, dict) and rng.get("integer"):
                fields[key] = round(value)
        gpu = self.resources_per_trial.gpu
        resources = {"CPU": self.resources_per_trial.cpu}
        if gpu:
            resources["GPU"] = gpu
        # Lax: Ray Tune samples numpy numbers, which strict mode would refuse.
        return FinetuneSpec.model_validate(
            {
                **fields,
                "dataset": self.dataset,
                "num_workers": 1,
                "use_gpu": gpu > 0,
                "resources_per_worker": resources,
                "seed": self.seed,
            },
            strict=False,
        )
