"""RF-DETR's model sizes (detection and instance segmentation) and the input resolutions each
accepts: what a spec, a registered version or a sweep is checked against."""

from __future__ import annotations

from typing import Literal, cast

from detrforge.platform.errors import InvalidSpecError

__all__ = [
    "MAX_RESOLUTION",
    "MIN_RESOLUTION",
    "MODEL_SIZES",
    "SEG_MODEL_SIZES",
    "TASKS",
    "ModelSize",
    "Task",
    "as_model_size",
    "check_resolution",
    "default_resolution",
    "nearest_resolutions",
    "task_of",
]

ModelSize = Literal[
    "nano",
    "small",
    "medium",
    "large",
    "seg-nano",
    "seg-small",
    "seg-medium",
    "seg-large",
    "seg-xlarge",
    "seg-2xlarge",
]
Task = Literal["detection", "segmentation"]
TASKS: tuple[str, ...] = ("detection", "segmentation")

# size -> (default resolution, patch size x windows: what the resolution must divide by)
MODEL_SIZES: dict[str, tuple[int, int]] = {
    "nano": (384, 32),
    "small": (512, 32),
    "medium": (576, 32),
    "large": (704, 32),
}
# RF-DETR-Seg sizes (rfdetr 1.11.2's RFDETRSeg*Config): patch size 12, one window for Nano and two
# for the rest. Their task is instance segmentation: boxes and a mask per detection.
SEG_MODEL_SIZES: dict[str, tuple[int, int]] = {
    "seg-nano": (312, 12),
    "seg-small": (384, 24),
    "seg-medium": (432, 24),
    "seg-large": (504, 24),
    "seg-xlarge": (624, 24),
    "seg-2xlarge": (768, 24),
}
_PATCH_SIZE = {**dict.fromkeys(MODEL_SIZES, 16), **dict.fromkeys(SEG_MODEL_SIZES, 12)}
MIN_RESOLUTION = 64
MAX_RESOLUTION = 2048


def as_model_size(value: str) -> ModelSize:
    """``value`` (a stored size) as a :data:`ModelSize`.

    Raises:
        InvalidSpecError: ``value`` names no RF-DETR size.
    """
    if value not in MODEL_SIZES and value not in SEG_MODEL_SIZES:
        raise InvalidSpecError(
            f"model_size: unknown model size {value!r}; choose from "
            f"{', '.join([*MODEL_SIZES, *SEG_MODEL_SIZES])}",
            field="model_size",
        )
    return cast(ModelSize, value)


def task_of(size: str) -> Task:
    """The task a model size is built for: ``segmentation`` for the ``seg-*`` sizes."""
    return "segmentation" if size in SEG_MODEL_SIZES else "detection"


def default_resolution(size: str) -> int:
    """The size's own input resolution (rfdetr's default for it)."""
    return {**MODEL_SIZES, **SEG_MODEL_SIZES}[size][0]


def _valid_range(multiple: int) -> tuple[int, int]:
    """The smallest and largest multiples of ``multiple`` within the resolution limits."""
    return -(-MIN_RESOLUTION // multiple) * multiple, (MAX_RESOLUTION // multiple) * multiple


def nearest_resolutions(resolution: int, multiple: int) -> list[int]:
    """The valid resolutions closest to ``resolution`` (one or two values, ascending)."""
    low, high = _valid_range(multiple)
    lower = min(high, max(low, (resolution // multiple) * multiple))
    upper = min(high, lower + multiple)
    return sorted({lower, upper})


def check_resolution(size: str, resolution: int) -> None:
    """Raise ``ValueError`` naming the nearest valid values if ``resolution`` cannot work.

    ``size`` is a detection size (``MODEL_SIZES``) or a segmentation one (``SEG_MODEL_SIZES``).
    """
    sizes = {**MODEL_SIZES, **SEG_MODEL_SIZES}
    if size not in sizes:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(sizes)}")
    multiple = sizes[size][1]
    low, high = _valid_range(multiple)
    if not low <= resolution <= high:
        raise ValueError(
            f"resolution {resolution} is out of range; use a multiple of {multiple} "
            f"between {low} and {high}"
        )
    if resolution % multiple:
        near = " or ".join(str(r) for r in nearest_resolutions(resolution, multiple))
        patch = _PATCH_SIZE[size]
        windows = multiple // patch
        raise ValueError(
            f"resolution {resolution} is not divisible by {multiple} (patch size {patch} x "
            f"{windows} window{'s' if windows > 1 else ''} for RF-DETR {size}); use {near}"
        )
