"""Persistence of hardware targets: named profiles a benchmark is scheduled and run on.

A target is the Ray resource request of one benchmark task plus how to run the model there
(backend, precision, batch size, CPU threads). Deleting a target is allowed: every benchmark
record copies the target's name, resources, backend and precision, so the history survives it.
"""

from __future__ import annotations

import builtins
import math
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import exc, select
from sqlalchemy.orm import Session, sessionmaker

from detrforge.platform.db import utcnow
from detrforge.platform.errors import ConflictError, InvalidSpecError, NotFoundError
from detrforge.registry.dbmodels import SqlHardwareTarget
from detrforge.registry.entities import HardwareTarget

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_NUM_THREADS",
    "PRECISIONS",
    "TARGET_BACKENDS",
    "TARGET_NAME_PATTERN",
    "UPDATABLE_TARGET_FIELDS",
    "TargetStore",
    "check_resources",
]

TARGET_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
TARGET_BACKENDS = ("torch", "onnxruntime", "torch_compiled", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")
# The same bounds BenchmarkSpec enforces, so every target yields a valid spec.
MAX_BATCH_SIZE = 256
MAX_NUM_THREADS = 256
# The name is not updatable: benchmark records refer to their target by name.
UPDATABLE_TARGET_FIELDS = frozenset(
    {"description", "resources", "backend", "precision", "batch_size", "num_threads"}
)
# Ray refuses fractional resource quantities finer than this.
_RAY_RESOURCE_UNIT = 0.0001
_MAX_DESCRIPTION_LENGTH = 10_000
_MAX_CREATED_BY_LENGTH = 255


def check_resources(value: object, *, field: str = "resources") -> dict[str, float]:
    """A Ray resource request as ``{name: quantity}`` with float quantities, or an error.

    Raises:
        InvalidSpecError: not a non-empty mapping of resource names to quantities Ray accepts.
    """
    example = "e.g. {'hw_cpu_x86': 1} or {'accelerator_type:T4': 0.001, 'GPU': 1}"
    if not isinstance(value, Mapping) or not value:
        raise InvalidSpecError(
            f"{field} must name at least one Ray resource and its quantity, {example}",
            field=field,
        )
    checked: dict[str, float] = {}
    for name, quantity in value.items():
        if not isinstance(name, str) or not name.strip():
            raise InvalidSpecError(
                f"{field} has an empty or non-text resource name {name!r}", field=field
            )
        if isinstance(quantity, bool) or not isinstance(quantity, int | float):
            raise InvalidSpecError(
                f"{field}[{name!r}] must be a number, not {type(quantity).__name__}", field=field
            )
        amount = float(quantity)
        if not math.isfinite(amount) or amount < _RAY_RESOURCE_UNIT:
            raise InvalidSpecError(
                f"{field}[{name!r}] must be a finite quantity of at least {_RAY_RESOURCE_UNIT} "
                f"(Ray's resource unit), got {quantity!r}",
                field=field,
            )
        if name == "GPU" and amount > 1 and not amount.is_integer():
            raise InvalidSpecError(
                f"{field}['GPU'] above 1 must be a whole number of GPUs, got {quantity!r}",
                field=field,
            )
        checked[name] = amount
    return checked


def _check_field(name: str, value: Any) -> Any:
    """The stored form of one target field, or an ``InvalidSpecError`` naming it."""
    if name == "description":
        if not isinstance(value, str) or len(value) > _MAX_DESCRIPTION_LENGTH:
            raise InvalidSpecError(
                f"description must be text of at most {_MAX_DESCRIPTION_LENGTH} characters",
                field=name,
            )
        return value
    if name == "resources":
        return check_resources(value)
    if name == "backend":
        if value not in TARGET_BACKENDS:
            raise InvalidSpecError(
                f"unknown backend {value!r}: use one of {', '.join(TARGET_BACKENDS)}", field=name
            )
        return value
    if name == "precision":
        if value not in PRECISIONS:
            raise InvalidSpecError(
                f"unknown precision {value!r}: use one of {', '.join(PRECISIONS)}", field=name
            )
        return value
    if name == "batch_size":
        if _is_int(value) and 1 <= value <= MAX_BATCH_SIZE:
            return value
        raise InvalidSpecError(
            f"batch_size must be a whole number from 1 to {MAX_BATCH_SIZE}, got {value!r}",
            field=name,
        )
    if name == "num_threads":
        if value is None or (_is_int(value) and 1 <= value <= MAX_NUM_THREADS):
            return value
        raise InvalidSpecError(
            f"num_threads must be a whole number from 1 to {MAX_NUM_THREADS}, or None to let "
            f"the runtime choose, got {value!r}",
            field=name,
        )
    raise AssertionError(f"no check for target field {name}")  # pragma: no cover


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class TargetStore:
    """CRUD over the ``hardware_targets`` table; every method runs in its own short transaction."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def create(
        self,
        *,
        name: str,
        description: str,
        resources: Mapping[str, float],
        backend: str,
        precision: str,
        batch_size: int,
        num_threads: int | None,
        created_by: str,
    ) -> HardwareTarget:
        """Record a new hardware target.

        Raises:
            InvalidSpecError: a field is invalid; ``field`` names it.
            ConflictError: a target with this name exists.
        """
        if not isinstance(name, str) or not TARGET_NAME_PATTERN.fullmatch(name):
            raise InvalidSpecError(
                f"hardware target name {name!r} is invalid: use 1 to 63 lower-case letters, "
                "digits, '.', '_' or '-', starting with a letter or digit (e.g. 't4-trt-fp16')",
                field="name",
            )
        if not isinstance(created_by, str) or not 1 <= len(created_by) <= _MAX_CREATED_BY_LENGTH:
            raise InvalidSpecError(
                f"created_by must be 1 to {_MAX_CREATED_BY_LENGTH} characters", field="created_by"
            )
        values = {
            field: _check_field(field, value)
            for field, value in (
                ("description", description),
                ("resources", resources),
                ("backend", backend),
                ("precision", precision),
                ("batch_size", batch_size),
                ("num_threads", num_threads),
            )
        }
        now = utcnow()
        try:
            with self._sessions.begin() as session:
                if session.get(SqlHardwareTarget, name) is not None:
                    raise _exists(name)
                row = SqlHardwareTarget(
                    name=name, created_by=created_by, created_at=now, updated_at=now, **values
                )
                session.add(row)
                session.flush()
                return row.to_entity()
        except exc.IntegrityError:
            # A concurrent create of the same name won the race to the primary key.
            raise _exists(name) from None

    def get(self, name: str) -> HardwareTarget:
        """The target called ``name``.

        Raises:
            NotFoundError: no such target.
        """
        with self._sessions() as session:
            row = session.get(SqlHardwareTarget, name)
            if row is None:
                raise _not_found(name)
            return row.to_entity()

    def list(self) -> builtins.list[HardwareTarget]:
        """Every target, by name."""
        with self._sessions() as session:
            rows = session.scalars(select(SqlHardwareTarget).order_by(SqlHardwareTarget.name))
            return [row.to_entity() for row in rows]

    def update(self, name: str, /, **fields: Any) -> HardwareTarget:
        """Change some of ``UPDATABLE_TARGET_FIELDS`` and return the target as stored.

        Records already in the benchmark history keep the values they were measured with.

        Raises:
            InvalidSpecError: a field that may not change (the name) or an invalid value.
            NotFoundError: no such target.
        """
        for field in sorted(fields):
            if field not in UPDATABLE_TARGET_FIELDS:
                allowed = ", ".join(sorted(UPDATABLE_TARGET_FIELDS))
                raise InvalidSpecError(
                    f"hardware target field {field!r} cannot be updated; updatable fields: "
                    f"{allowed} (to rename, create a new target)",
                    field=field,
                )
        values = {field: _check_field(field, value) for field, value in fields.items()}
        with self._sessions.begin() as session:
            row = session.get(SqlHardwareTarget, name)
            if row is None:
                raise _not_found(name)
            if values:
                for field, value in values.items():
                    setattr(row, field, value)
                row.updated_at = utcnow()
                session.flush()
            return row.to_entity()

    def delete(self, name: str) -> None:
        """Delete the target; its benchmark history stays, carrying copies of its settings.

        Raises:
            NotFoundError: no such target.
        """
        with self._sessions.begin() as session:
            row = session.get(SqlHardwareTarget, name)
            if row is None:
                raise _not_found(name)
            session.delete(row)


def _exists(name: str) -> ConflictError:
    return ConflictError(
        f"hardware target {name} exists; update it or choose another name", field="name"
    )


def _not_found(name: str) -> NotFoundError:
    return NotFoundError(f"hardware target {name} not found")
