"""Optimized inference variants of a checkpoint: the catalog, builders, calibration, predictors.

OpenVINO and NNCF are imported only by the variants that use them (their imports take seconds).
"""

from detrforge.detector.variants.build import (
    VARIANT_PREFIX,
    BuiltVariant,
    SkippedVariant,
    artifact_sha256,
    build_variants,
    load_predictor,
)
from detrforge.detector.variants.calibration import (
    DEFAULT_CALIBRATION_IMAGES,
    CalibrationSet,
    calibration_set,
)
from detrforge.detector.variants.catalog import (
    CPU_VARIANTS,
    GPU_VARIANTS,
    VARIANTS,
    VariantKind,
    runtime_versions,
    unavailable_reason,
    variant_kind,
)

__all__ = [
    "CPU_VARIANTS",
    "DEFAULT_CALIBRATION_IMAGES",
    "GPU_VARIANTS",
    "VARIANTS",
    "VARIANT_PREFIX",
    "BuiltVariant",
    "CalibrationSet",
    "SkippedVariant",
    "VariantKind",
    "artifact_sha256",
    "build_variants",
    "calibration_set",
    "load_predictor",
    "runtime_versions",
    "unavailable_reason",
    "variant_kind",
]
