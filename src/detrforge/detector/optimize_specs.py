"""The validated, frozen specs of an optimize job: build a version's inference variants on a
hardware target and measure each against eager (``jobs/optimize.py``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from detrforge.detector.specs import (
    RESOURCE_AMOUNTS_SCHEMA,
    FrozenSpec,
    Split,
    Threads,
    _CheckpointSpec,
)
from detrforge.platform.limits import MAX_INT, Name, Uri

__all__ = ["DEFAULT_AP_TOLERANCE", "OptimizeRequest", "OptimizeSpec"]


DEFAULT_AP_TOLERANCE = 0.005
VariantName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{0,31}$")]


class _OptimizeFields(FrozenSpec):
    target: Name = Field(description="The hardware target to build and measure on.")
    variants: list[VariantName] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description="Variants to build (GET /variants/catalog lists them); default: every "
        "variant for the target's device.",
    )
    split: Split = Field(default="valid", description="The split AP is measured on.")
    calibration_split: Split = Field(
        default="train", description="The split int8 variants calibrate on."
    )
    calibration_images: int = Field(default=16, ge=1, le=1024)
    warmup: int = Field(default=5, ge=0, le=10_000)
    runs: int = Field(
        default=50,
        ge=5,
        le=10_000,
        description="Timed runs per arm: each variant and eager, interleaved in one process.",
    )
    confidence: float = Field(default=0.95, ge=0.5, le=0.999)
    ap_tolerance: float = Field(
        default=DEFAULT_AP_TOLERANCE,
        ge=0,
        le=1,
        description="The most AP a variant may lose against eager to count as a candidate to "
        "ship (the fastest such variant is marked).",
    )


class OptimizeRequest(_OptimizeFields):
    """What ``POST /models/{name}/versions/{version}/optimize`` accepts."""

    dataset: Uri | None = Field(
        default=None,
        description="A COCO dataset: AP on `split`, int8 calibration on `calibration_split`. "
        "Default: the model's pinned eval set.",
    )


class OptimizeSpec(_CheckpointSpec, _OptimizeFields):
    """Build a version's variants on its target and measure each against eager."""

    dataset: Uri
    model_name: Name
    model_version: int = Field(ge=1, le=MAX_INT)
    target_resources: dict[str, float] = Field(
        default_factory=dict, json_schema_extra=RESOURCE_AMOUNTS_SCHEMA
    )
    num_threads: Threads | None = None
