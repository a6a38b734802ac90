"""What a benchmark record holds: its fields, their limits, and the check that admits one."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from detrforge.platform.db import utcnow
from detrforge.platform.errors import InvalidSpecError
from detrforge.registry.targets import check_resources

__all__ = [
    "BENCHMARK_CSV_COLUMNS",
    "DOCUMENT_FIELDS",
    "FLOAT_FIELDS",
    "INT_FIELDS",
    "LATER_COLUMNS",
    "MASK_MS_FIELDS",
    "OPTIONAL_FIELDS",
    "aware_utc",
    "check_record",
]

# Text fields and their longest allowed value (None: unbounded); ``required`` ones may not be
# empty, optional ones store an empty string as None.
_REQUIRED_TEXT = {
    "job_id": 32,
    "checkpoint_uri": None,
    "checkpoint_sha256": 64,
    "model_size": 16,
    "target": 63,
    "backend": 32,
    "precision": 8,
}
_OPTIONAL_TEXT = {
    "model_name": 255,
    "node_id": 128,
    "device": 255,
    "mlflow_run_id": 64,
    "dataset_fingerprint": 128,
}
# Whole-number fields and their smallest allowed value.
_REQUIRED_INT = {"resolution": 1, "batch_size": 1, "warmup": 0, "runs": 1}
_OPTIONAL_INT = {"model_version": 1, "threads": 1}
_REQUIRED_MS = ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms")
# A segmentation model's mask decoding (upsampling and thresholding its masks), timed apart from
# the model (``p*_ms``) and inside end to end (``e2e_*``); None for a detection model.
MASK_MS_FIELDS = ("mask_p50_ms", "mask_p95_ms", "mask_p99_ms")
_OPTIONAL_MS = ("e2e_p50_ms", "e2e_p95_ms", "e2e_p99_ms", *MASK_MS_FIELDS)
_JSON_SCALARS = (str, int, float, bool, type(None))

# Nested JSON documents (a CSV cell holds each as JSON; exports from before them lack the column):
# ``paired``, a paired A/B's arms, ratios and samples; ``node_load``, the node's load meanwhile.
DOCUMENT_FIELDS = ("paired", "node_load")
BENCHMARK_CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "job_id",
    "created_at",
    "model_name",
    "model_version",
    "checkpoint_uri",
    "checkpoint_sha256",
    "model_size",
    "target",
    "target_resources",
    "node_id",
    "backend",
    "precision",
    "resolution",
    "batch_size",
    "warmup",
    "runs",
    "threads",
    "device",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "std_ms",
    "min_ms",
    "max_ms",
    "e2e_p50_ms",
    "e2e_p95_ms",
    "e2e_p99_ms",
    *MASK_MS_FIELDS,
    "images_per_s",
    "mlflow_run_id",
    "dataset_fingerprint",
    *DOCUMENT_FIELDS,
)
# Columns that CSV exports from before them lack (read back as None).
LATER_COLUMNS = frozenset((*DOCUMENT_FIELDS, *MASK_MS_FIELDS))
# Fields a new record may give: every field but the id, which the store assigns.
_ADDABLE_FIELDS = frozenset(BENCHMARK_CSV_COLUMNS) - {"id"} | {"environment"}
OPTIONAL_FIELDS = (
    frozenset(_OPTIONAL_TEXT) | frozenset(_OPTIONAL_INT) | set(_OPTIONAL_MS) | set(DOCUMENT_FIELDS)
)
# Fields by the type a CSV cell reads back as.
INT_FIELDS = frozenset(_REQUIRED_INT) | frozenset(_OPTIONAL_INT)
FLOAT_FIELDS = frozenset((*_REQUIRED_MS, *_OPTIONAL_MS, "images_per_s"))


def aware_utc(value: datetime, field: str) -> datetime:
    """``value`` in UTC; refuses a naive datetime, naming ``field``."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidSpecError(f"{field} must be a timezone-aware datetime", field=field)
    return value.astimezone(UTC)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_record(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The stored form of a record's fields, or an ``InvalidSpecError`` naming the bad one."""
    unknown = sorted(set(fields) - _ADDABLE_FIELDS)
    if unknown:
        hint = " (the store assigns it)" if unknown[0] == "id" else ""
        raise InvalidSpecError(
            f"unknown benchmark record field {unknown[0]!r}{hint}", field=unknown[0]
        )
    values: dict[str, Any] = {}

    def missing(name: str) -> InvalidSpecError:
        return InvalidSpecError(f"benchmark record field {name} is required", field=name)

    for name, max_length in {**_REQUIRED_TEXT, **_OPTIONAL_TEXT}.items():
        value = fields.get(name)
        if value is None or value == "":
            if name in _REQUIRED_TEXT:
                raise missing(name)
            values[name] = None
            continue
        if not isinstance(value, str):
            raise InvalidSpecError(f"{name} must be text, not {type(value).__name__}", field=name)
        if max_length is not None and len(value) > max_length:
            raise InvalidSpecError(
                f"{name} must be at most {max_length} characters, got {len(value)}", field=name
            )
        values[name] = value

    for name, minimum in {**_REQUIRED_INT, **_OPTIONAL_INT}.items():
        value = fields.get(name)
        if value is None:
            if name in _REQUIRED_INT:
                raise missing(name)
            values[name] = None
            continue
        if not _is_int(value) or value < minimum:
            raise InvalidSpecError(
                f"{name} must be a whole number >= {minimum}, got {value!r}", field=name
            )
        values[name] = value

    for name in (*_REQUIRED_MS, *_OPTIONAL_MS, "images_per_s"):
        value = fields.get(name)
        if value is None:
            if name not in _OPTIONAL_MS:
                raise missing(name)
            values[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidSpecError(
                f"{name} must be a number, not {type(value).__name__}", field=name
            )
        number = float(value)
        # Throughput is infinite when a batch took no measurable time; a latency never is.
        valid = number >= 0 and (math.isfinite(number) or name == "images_per_s")
        if not valid:
            raise InvalidSpecError(
                f"{name} must be a finite number >= 0, got {value!r}", field=name
            )
        values[name] = number

    if fields.get("target_resources") is None:
        raise missing("target_resources")
    values["target_resources"] = check_resources(
        fields["target_resources"], field="target_resources"
    )
    values["environment"] = _check_environment(fields.get("environment", {}))
    for name in DOCUMENT_FIELDS:
        document = fields.get(name)
        if document is not None and not isinstance(document, Mapping):
            raise InvalidSpecError(f"{name} must be a JSON object or null", field=name)
        values[name] = None if document is None else _finite_json(dict(document), name)
    created_at = fields.get("created_at")
    values["created_at"] = utcnow() if created_at is None else aware_utc(created_at, "created_at")
    return values


def _check_environment(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidSpecError(
            "environment must be a mapping of names to versions", field="environment"
        )
    checked: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise InvalidSpecError(
                f"environment keys must be non-empty text, got {key!r}", field="environment"
            )
        if not isinstance(item, _JSON_SCALARS) or (
            isinstance(item, float) and not math.isfinite(item)
        ):
            raise InvalidSpecError(
                f"environment[{key!r}] must be text, a finite number, a boolean or None",
                field="environment",
            )
        checked[key] = item
    return checked


def _finite_json(value: Any, field: str) -> Any:
    """``value`` as stored JSON; a NaN or infinity anywhere in it is refused, naming ``field``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidSpecError(f"{field} holds a non-finite number", field=field)
    if isinstance(value, Mapping):
        return {str(k): _finite_json(v, field) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(v, field) for v in value]
    if not isinstance(value, _JSON_SCALARS):
        raise InvalidSpecError(f"{field} holds a {type(value).__name__}, not JSON", field=field)
    return value
