"""The validated, frozen spec of a sweep: a Ray Tune search over fine-tune configurations."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from detrforge.detector.sizes import MODEL_SIZES, SEG_MODEL_SIZES, Task, check_resolution, task_of
from detrforge.detector.specs import (
    MAX_SEED,
    RESOURCE_AMOUNTS_SCHEMA,
    Backend,
    FinetuneSpec,
    FrozenSpec,
    SpecFieldError,
    check_resource_amounts,
)
from detrforge.platform.limits import Name, Uri

__all__ = [
    "RANKING_METRICS",
    "SWEEP_TUNABLE",
    "ParamRange",
    "SweepScheduler",
    "SweepRequest",
    "SweepSpec",
    "TrialResources",
    "ranking_metric",
]

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

# What a sweep ranks its trials on, and draws its Pareto front with, per task: validation AP of
# the boxes, or of the masks for a segmentation sweep (the figure its promotions gate on).
RANKING_METRICS: dict[str, str] = {"detection": "bbox/AP", "segmentation": "segm/AP"}


class ParamRange(FrozenSpec):
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


class SweepScheduler(FrozenSpec):
    """``asha`` stops weak trials at rungs (grace x reduction factor^k); ``none`` runs all."""

    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(
        default=1, ge=1, le=10_000, description="Epochs before ASHA may stop a trial."
    )
    reduction_factor: float = Field(default=2.0, gt=1.0, le=100.0)
    max_epochs: int | None = Field(
        default=None, ge=1, le=10_000, description="ASHA's max_t; default: the largest epochs."
    )


class TrialResources(FrozenSpec):
    """What Ray reserves for one trial (one training process): fractional CPUs, GPUs."""

    cpu: float = Field(default=1.0, gt=0, le=1024)
    gpu: float = Field(default=0.0, ge=0, le=64)


def _task(space: dict[str, Any], base: dict[str, Any]) -> Task:
    sizes = space.get("model_size") or [base.get("model_size", "nano")]
    return task_of(str(sizes[0]))


def ranking_metric(spec: dict[str, Any]) -> str:
    """The metric a stored (already validated) sweep spec ranks its trials on."""
    return RANKING_METRICS[_task(spec.get("space") or {}, spec.get("base") or {})]


def _optuna_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("optuna") is not None


class SweepRequest(FrozenSpec):
    """What ``POST /sweeps`` accepts: a Ray Tune search over fine-tune configurations, each trial
    measured on ``target``; the control layer fills the target's profile into a SweepSpec.

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
    backend: Backend | None = Field(default=None, description="Default: the target's.")
    bench_threads: int | None = Field(
        default=None, ge=1, le=256, description="Default: the target's threads."
    )
    bench_warmup: int = Field(default=3, ge=0, le=10_000)
    bench_runs: int = Field(default=20, ge=1, le=100_000)
    latency_sla_ms: float | None = Field(default=None, gt=0, le=3_600_000)
    max_concurrent_trials: int = Field(default=2, ge=1, le=1024)
    resources_per_trial: TrialResources = Field(default_factory=TrialResources)
    seed: int = Field(default=42, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _check_sweep(self) -> SweepRequest:
        if self.search == "optuna" and not _optuna_installed():
            raise SpecFieldError(
                "search",
                "search 'optuna' needs the optuna package, which is not installed on the server; "
                "use 'grid' or 'random' (or install optuna)",
            )
        for key in self.base:
            if key in _SWEEP_OWNED or key not in FinetuneSpec.model_fields:
                raise SpecFieldError(
                    f"base.{key}",
                    f"base.{key} cannot be set for a sweep trial; settable fields: "
                    f"{', '.join(SWEEP_TUNABLE)}",
                )
            if key in self.space:
                raise SpecFieldError(f"base.{key}", f"{key} is both in base and in space; keep one")
        self._validate(self.base, "base")
        sizes = self._sizes()
        for key, value in self.space.items():
            self._check_dimension(key, value, sizes)
        self._check_combinations()
        max_t = self.max_epochs
        if self.scheduler.type == "asha" and self.scheduler.grace_period > max_t:
            raise SpecFieldError(
                "scheduler.grace_period",
                f"grace_period ({self.scheduler.grace_period}) exceeds the trials' max epochs "
                f"({max_t}); ASHA could never stop a trial",
            )
        return self

    # -- validation helpers ---------------------------------------------------------------
    def _sizes(self) -> list[str]:
        sizes = self.space.get("model_size", [self.base.get("model_size", "nano")])
        if not isinstance(sizes, list) or not sizes:
            raise SpecFieldError("space.model_size", "space.model_size: give at least one size")
        known = (*MODEL_SIZES, *SEG_MODEL_SIZES)
        for size in sizes:
            # A non-string (a list, an object) is no size, and unhashable for the lookup.
            if not isinstance(size, str) or size not in known:
                raise SpecFieldError(
                    "space.model_size",
                    f"unknown model size {size!r}; choose from {', '.join(known)}",
                )
        tasks = {task_of(size) for size in sizes}
        if len(tasks) > 1:
            # Every trial is ranked, and the front drawn, on one metric: box AP or mask AP.
            raise SpecFieldError(
                "space.model_size",
                "space.model_size: mixes detection and segmentation sizes; a sweep ranks its "
                "trials on one metric (bbox AP, or mask AP for seg-* sizes): sweep one task",
            )
        if "task" in self.space:
            raise SpecFieldError(
                "space.task", "space.task: the task follows the model sizes; drop it from space"
            )
        return [str(s) for s in sizes]

    def _check_dimension(self, key: str, value: Any, sizes: list[str]) -> None:
        field = f"space.{key}"
        if key not in SWEEP_TUNABLE:
            raise SpecFieldError(
                field, f"cannot search over {key!r}; searchable fields: {', '.join(SWEEP_TUNABLE)}"
            )
        if isinstance(value, dict):
            if self.search == "grid":
                raise SpecFieldError(
                    field, f"{field}: grid search needs a list of choices, not a range"
                )
            if key in ("model_size", "resolution"):
                raise SpecFieldError(field, f"{field}: give a list of choices, not a range")
            try:
                rng = ParamRange.model_validate(value)
            except ValidationError as exc:
                message = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise SpecFieldError(field, f"{field}: {message}") from None
            # A range's ends are floats by ParamRange's type; whole ones may fill int fields.
            self._validate({key: rng.low}, field, strict=False)
            self._validate({key: rng.high}, field, strict=False)
            return
        if not isinstance(value, list):
            raise SpecFieldError(field, f"{field}: give a list of choices or a range object")
        if not value:
            raise SpecFieldError(field, f"{field}: the list of choices is empty; give at least one")
        if key == "resolution":
            for res in value:
                if isinstance(res, bool) or not isinstance(res, int):
                    raise SpecFieldError(field, f"{field}: {res!r} is not a whole number of pixels")
                for size in sizes:
                    try:
                        check_resolution(size, res)
                    except ValueError as exc:
                        raise SpecFieldError(field, f"{field}: {exc}") from None
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
        except (ValidationError, SpecFieldError) as exc:
            if isinstance(exc, SpecFieldError):
                message = exc.message
            else:
                err = exc.errors()[0]
                ctx_err = (err.get("ctx") or {}).get("error")
                message = getattr(ctx_err, "message", None) or str(err["msg"])
                message = message.removeprefix("Value error, ")
            raise SpecFieldError(field, f"{field}: {message}") from None

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
    def task(self) -> Task:
        """The task of every trial (the validator refuses a sweep that mixes tasks)."""
        return _task(self.space, self.base)

    @property
    def metric(self) -> str:
        """The validation metric trials are ranked on (:data:`RANKING_METRICS`)."""
        return RANKING_METRICS[self.task]

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


class SweepSpec(SweepRequest):
    """A validated sweep with its target's profile filled in: what the sweep job runs."""

    target_resources: dict[str, float] = Field(
        default_factory=dict, json_schema_extra=RESOURCE_AMOUNTS_SCHEMA
    )
    backend: Backend = "torch"

    @field_validator("target_resources")
    @classmethod
    def _resources_positive(cls, value: dict[str, float]) -> dict[str, float]:
        return check_resource_amounts(value)
