"""The append-only benchmark history: add, read, list, summarize, and export/import as CSV.

A record is written once, by :meth:`BenchmarkStore.add`, and never changed or removed: the store
has no update or delete, and the database refuses UPDATE and DELETE of ``benchmark_records``
with triggers (migration 0002). ``add`` is idempotent per benchmark job, so the reconciler may
call it again for a job it has already recorded.

CSV rule (:func:`to_csv` / :func:`from_csv`; ``from_csv(to_csv(records))`` gives back every field
value exactly, i.e. ``[BenchmarkRecord(**row) for row in from_csv(text)] == records``):

- The columns are ``BENCHMARK_CSV_COLUMNS`` in that order, then one ``env.<key>`` column per key of
  any record's ``environment``: the keys of ``ENVIRONMENT_KEYS`` in that order, then the others
  sorted.
- An empty cell in a fixed column means None. Empty strings are never stored (``add`` turns an
  empty optional text field into None and refuses an empty required one), so this is unambiguous.
- Integers are written in decimal, floats with ``repr`` (shortest text that reads back to the same
  float; ``inf`` included), ``created_at`` in ISO 8601 with its UTC offset, ``target_resources``
  as JSON text with sorted keys.
- An ``env.<key>`` cell is empty when the record's environment has no such key. Otherwise a value
  that is not a string is written as JSON (``16``, ``true``, ``null`` for None), and a string is
  written as it is, unless it is empty or would itself read as JSON (``"12"``, ``"true"``,
  ``"null"``): then it is written JSON-quoted (the text 12 becomes the cell ``"12"``, quotes
  included, while the number 12 becomes ``12``). Reading, a cell that parses as JSON is that
  value and any other cell is the text itself.
- Text (not numbers, times or JSON) that would start a spreadsheet formula (``=``, ``+``, ``-``,
  ``@``, tab, CR) or starts with ``'`` is written with a leading ``'`` (OWASP's rule for CSV
  injection); reading drops it (``csv_cells``).
"""

from __future__ import annotations

import builtins
import csv
import io
import json
import math
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, exc, func, select
from sqlalchemy.orm import Session, sessionmaker

from detrforge.platform.csv_cells import escape_cell, unescape_cell
from detrforge.platform.db import utcnow
from detrforge.platform.environment import ENVIRONMENT_KEYS
from detrforge.platform.errors import InvalidSpecError, NotFoundError
from detrforge.platform.limits import check_page
from detrforge.registry.dbmodels import SqlBenchmarkRecord
from detrforge.registry.entities import BenchmarkRecord
from detrforge.registry.targets import check_resources

__all__ = [
    "BENCHMARK_CSV_COLUMNS",
    "ENV_COLUMN_PREFIX",
    "SUMMARY_GROUPS",
    "BenchmarkStore",
    "from_csv",
    "new_benchmark_id",
    "to_csv",
]

ENV_COLUMN_PREFIX = "env."
SUMMARY_GROUPS = ("checkpoint_sha256", "model_name")

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
_OPTIONAL_MS = ("e2e_p50_ms", "e2e_p95_ms", "e2e_p99_ms")
_JSON_SCALARS = (str, int, float, bool, type(None))

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
    "images_per_s",
    "mlflow_run_id",
    "dataset_fingerprint",
)
# Fields add() accepts: every field but the id, which the store assigns.
_ADDABLE_FIELDS = frozenset(BENCHMARK_CSV_COLUMNS) - {"id"} | {"environment"}
_OPTIONAL_CSV_COLUMNS = frozenset(_OPTIONAL_TEXT) | frozenset(_OPTIONAL_INT) | set(_OPTIONAL_MS)


def new_benchmark_id() -> str:
    """A fresh record id: ``bm-`` and 12 random hex digits."""
    return f"bm-{secrets.token_hex(6)}"


class BenchmarkStore:
    """The benchmark history: :meth:`add` is the only write; there is no update and no delete."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def add(self, record_fields: Mapping[str, Any]) -> BenchmarkRecord:
        """Append the record of one benchmark job, or return the one already recorded for it.

        ``record_fields`` holds every ``BenchmarkRecord`` field but ``id`` (assigned here);
        ``created_at`` (timezone-aware) defaults to now and the optional fields to None. A second
        add for the same ``job_id`` returns the existing record unchanged, whatever it carries.

        Raises:
            InvalidSpecError: a missing, unknown or invalid field; ``field`` names it.
        """
        values = _check_record(record_fields)
        job_id = values["job_id"]
        try:
            with self._sessions.begin() as session:
                existing = _by_job_id(session, job_id)
                if existing is not None:
                    return existing.to_entity()
                row = SqlBenchmarkRecord(id=new_benchmark_id(), **values)
                session.add(row)
                session.flush()
                return row.to_entity()
        except exc.IntegrityError:
            # A concurrent add for the same job won the race to the unique job_id index.
            with self._sessions() as session:
                existing = _by_job_id(session, job_id)
                if existing is None:
                    raise
                return existing.to_entity()

    def get(self, record_id: str) -> BenchmarkRecord:
        """The record with id ``record_id``.

        Raises:
            NotFoundError: no such record.
        """
        with self._sessions() as session:
            row = session.get(SqlBenchmarkRecord, record_id)
            if row is None:
                raise NotFoundError(f"benchmark record {record_id} not found")
            return row.to_entity()

    def get_by_job(self, job_id: str) -> BenchmarkRecord | None:
        """The record of benchmark job ``job_id``, or None when it has none yet."""
        with self._sessions() as session:
            row = _by_job_id(session, job_id)
            return None if row is None else row.to_entity()

    def list(
        self,
        *,
        checkpoint_sha256: str | None = None,
        model_name: str | None = None,
        target: str | None = None,
        backend: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[builtins.list[BenchmarkRecord], int]:
        """One page of records, newest first, and the number of records matching the filters.

        ``since`` is inclusive and ``until`` exclusive: ``since <= created_at < until``.
        """
        check_page(limit, offset)
        filters: builtins.list[ColumnElement[bool]] = []
        for column, value in (
            (SqlBenchmarkRecord.checkpoint_sha256, checkpoint_sha256),
            (SqlBenchmarkRecord.model_name, model_name),
            (SqlBenchmarkRecord.target, target),
            (SqlBenchmarkRecord.backend, backend),
        ):
            if value is not None:
                filters.append(column == value)
        if since is not None:
            filters.append(SqlBenchmarkRecord.created_at >= _aware(since, "since"))
        if until is not None:
            filters.append(SqlBenchmarkRecord.created_at < _aware(until, "until"))
        with self._sessions() as session:
            total = session.scalar(
                select(func.count()).select_from(SqlBenchmarkRecord).where(*filters)
            )
            rows = session.scalars(
                select(SqlBenchmarkRecord)
                .where(*filters)
                .order_by(SqlBenchmarkRecord.created_at.desc(), SqlBenchmarkRecord.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
            return [row.to_entity() for row in rows], int(total or 0)

    def summary(self, *, group_by: str = "checkpoint_sha256") -> builtins.list[dict[str, Any]]:
        """How latency moved, per (``group_by``, target, backend, precision, resolution).

        ``group_by`` is ``checkpoint_sha256`` (one checkpoint across library upgrades) or
        ``model_name`` (every version of a model). Each group gives ``count``,
        ``latest_p95_ms``/``latest_e2e_p95_ms`` and ``latest_id`` (newest record),
        ``min_p95_ms``, ``max_p95_ms``, ``first_created_at``, ``last_created_at``, and the
        distinct ``torch_versions`` and ``rfdetr_versions`` seen, oldest first. Groups are
        sorted by their key, None first.

        Raises:
            InvalidSpecError: an unknown ``group_by``.
        """
        if group_by not in SUMMARY_GROUPS:
            raise InvalidSpecError(
                f"cannot group benchmarks by {group_by!r}: use one of {', '.join(SUMMARY_GROUPS)}",
                field="group_by",
            )
        record = SqlBenchmarkRecord
        key_columns = (
            getattr(record, group_by),
            record.target,
            record.backend,
            record.precision,
            record.resolution,
        )
        statement = select(
            *key_columns,
            record.created_at,
            record.id,
            record.p95_ms,
            record.e2e_p95_ms,
            record.environment,
        ).order_by(record.created_at, record.id)
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        with self._sessions() as session:
            rows = session.execute(statement).all()
        # Oldest first, so the last row of a group is its latest record.
        for key_value, target, backend, precision, resolution, at, id_, p95, e2e_p95, env in rows:
            key = (key_value, target, backend, precision, resolution)
            group = groups.get(key)
            if group is None:
                group = groups[key] = {
                    group_by: key_value,
                    "target": target,
                    "backend": backend,
                    "precision": precision,
                    "resolution": resolution,
                    "count": 0,
                    "min_p95_ms": p95,
                    "max_p95_ms": p95,
                    "first_created_at": at,
                    "torch_versions": [],
                    "rfdetr_versions": [],
                }
            group["count"] += 1
            group["latest_p95_ms"] = p95
            group["latest_e2e_p95_ms"] = e2e_p95
            group["latest_id"] = id_
            group["min_p95_ms"] = min(group["min_p95_ms"], p95)
            group["max_p95_ms"] = max(group["max_p95_ms"], p95)
            group["last_created_at"] = at
            for package in ("torch", "rfdetr"):
                version = (env or {}).get(package)
                seen = group[f"{package}_versions"]
                if version is not None and version not in seen:
                    seen.append(version)
        return [groups[key] for key in sorted(groups, key=_none_first)]

    # The CSV functions are pure; offered here too so a caller holding the store needs no
    # second import. Inside these bodies the names resolve to the module's functions.
    @staticmethod
    def to_csv(records: Iterable[BenchmarkRecord]) -> str:
        """``records`` as CSV text: see :func:`detrforge.registry.benchmarks.to_csv`."""
        return to_csv(records)

    @staticmethod
    def from_csv(text: str) -> builtins.list[dict[str, Any]]:
        """Records from CSV text: see :func:`detrforge.registry.benchmarks.from_csv`."""
        return from_csv(text)


def _by_job_id(session: Session, job_id: str) -> SqlBenchmarkRecord | None:
    return session.scalars(
        select(SqlBenchmarkRecord).where(SqlBenchmarkRecord.job_id == job_id)
    ).first()


def _none_first(key: tuple[Any, ...]) -> tuple[tuple[bool, Any], ...]:
    return tuple((part is not None, part) for part in key)


def _aware(value: datetime, field: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidSpecError(f"{field} must be a timezone-aware datetime", field=field)
    return value.astimezone(UTC)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_record(fields: Mapping[str, Any]) -> dict[str, Any]:
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
    created_at = fields.get("created_at")
    values["created_at"] = utcnow() if created_at is None else _aware(created_at, "created_at")
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


def _environment_columns(records: Iterable[BenchmarkRecord]) -> builtins.list[str]:
    keys: set[str] = set()
    for record in records:
        keys.update(record.environment)
    known = [key for key in ENVIRONMENT_KEYS if key in keys]
    return known + sorted(keys - set(known))


def _reads_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _env_cell(value: Any) -> str:
    if isinstance(value, str) and value and not _reads_as_json(value):
        return escape_cell(value)
    return json.dumps(value)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, dict):
        # Sorted: PostgreSQL's JSONB does not keep key order, and an export should not depend
        # on the backend.
        return json.dumps(value, sort_keys=True)
    if isinstance(value, str):
        return escape_cell(value)
    return str(value)


def to_csv(records: Iterable[BenchmarkRecord]) -> str:
    """``records`` as CSV text with a header row, by the rule in this module's docstring."""
    records = builtins.list(records)
    env_keys = _environment_columns(records)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*BENCHMARK_CSV_COLUMNS, *(ENV_COLUMN_PREFIX + key for key in env_keys)])
    for record in records:
        cells = [_cell(getattr(record, column)) for column in BENCHMARK_CSV_COLUMNS]
        cells += [
            _env_cell(record.environment[key]) if key in record.environment else ""
            for key in env_keys
        ]
        writer.writerow(cells)
    return buffer.getvalue()


def from_csv(text: str) -> builtins.list[dict[str, Any]]:
    """The records of CSV text written by :func:`to_csv`, one dict of every field per row.

    Columns may come in any order. Each dict builds a ``BenchmarkRecord`` as it was exported.

    Raises:
        InvalidSpecError: a missing, repeated or unknown column, or a cell that does not parse;
            ``field`` names the column.
    """
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    header = next(reader, None)
    if header is None:
        raise InvalidSpecError("benchmark CSV is empty: expected a header row", field="csv")
    for column in header:
        if column not in BENCHMARK_CSV_COLUMNS and not _env_key(column):
            raise InvalidSpecError(f"unknown benchmark CSV column {column!r}", field=column)
        if header.count(column) > 1:
            raise InvalidSpecError(f"benchmark CSV column {column!r} repeats", field=column)
    for column in BENCHMARK_CSV_COLUMNS:
        if column not in header:
            raise InvalidSpecError(f"benchmark CSV lacks column {column!r}", field=column)
    records = []
    for line, cells in enumerate(reader, start=2):
        if not cells:
            continue
        if len(cells) != len(header):
            raise InvalidSpecError(
                f"benchmark CSV row {line} has {len(cells)} cells, the header {len(header)}",
                field="csv",
            )
        record: dict[str, Any] = {"environment": {}}
        for column, cell in zip(header, cells, strict=True):
            env_key = _env_key(column)
            if env_key:
                if cell:
                    record["environment"][env_key] = _parse_env(cell)
                continue
            try:
                record[column] = _parse_cell(column, cell)
            except ValueError as error:
                raise InvalidSpecError(
                    f"benchmark CSV row {line}, column {column}: {error}", field=column
                ) from None
        records.append(record)
    return records


def _env_key(column: str) -> str:
    """The environment key an ``env.<key>`` column holds; empty for any other column."""
    return column.removeprefix(ENV_COLUMN_PREFIX) if column.startswith(ENV_COLUMN_PREFIX) else ""


def _parse_env(cell: str) -> Any:
    if cell.startswith("'"):
        return unescape_cell(cell)
    try:
        return json.loads(cell)
    except ValueError:
        return cell


def _parse_cell(column: str, cell: str) -> Any:
    if cell == "":
        if column in _OPTIONAL_CSV_COLUMNS:
            return None
        raise ValueError("empty, but the field is required")
    if column == "created_at":
        at = datetime.fromisoformat(cell)
        if at.tzinfo is None:
            raise ValueError(f"{cell!r} has no UTC offset")
        return at.astimezone(UTC)
    if column == "target_resources":
        resources = json.loads(cell)
        if not isinstance(resources, dict):
            raise ValueError(f"{cell!r} is not a JSON object")
        return resources
    if column in _REQUIRED_INT or column in _OPTIONAL_INT:
        return int(cell)
    if column in _REQUIRED_MS or column in _OPTIONAL_MS or column == "images_per_s":
        return float(cell)
    return unescape_cell(cell)
