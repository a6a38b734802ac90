"""The append-only benchmark history: add, read, list and summarize records.

A record is written once, by :meth:`BenchmarkStore.add`, and never changed or removed: the store
has no update or delete, and the database refuses UPDATE and DELETE of ``benchmark_records``
with triggers (migration 0002). ``add`` is idempotent per benchmark job, so the reconciler may
call it again for a job it has already recorded. What a record may hold is
:mod:`~detrforge.registry.benchmark_fields`; CSV export and import is
:mod:`~detrforge.registry.benchmark_csv`.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, exc, func, select
from sqlalchemy.orm import Session, sessionmaker

from detrforge.platform.errors import InvalidSpecError, NotFoundError
from detrforge.platform.limits import check_page
from detrforge.registry import benchmark_csv
from detrforge.registry.benchmark_fields import aware_utc, check_record
from detrforge.registry.dbmodels import SqlBenchmarkRecord
from detrforge.registry.entities import BenchmarkRecord

__all__ = ["SUMMARY_GROUPS", "BenchmarkStore", "new_benchmark_id"]

SUMMARY_GROUPS = ("checkpoint_sha256", "model_name")


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
        values = check_record(record_fields)
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
            filters.append(SqlBenchmarkRecord.created_at >= aware_utc(since, "since"))
        if until is not None:
            filters.append(SqlBenchmarkRecord.created_at < aware_utc(until, "until"))
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
    # second import.
    @staticmethod
    def to_csv(records: Iterable[BenchmarkRecord]) -> str:
        """``records`` as CSV text: see :func:`detrforge.registry.benchmark_csv.to_csv`."""
        return benchmark_csv.to_csv(records)

    @staticmethod
    def from_csv(text: str) -> builtins.list[dict[str, Any]]:
        """Records from CSV text: see :func:`detrforge.registry.benchmark_csv.from_csv`."""
        return benchmark_csv.from_csv(text)


def _by_job_id(session: Session, job_id: str) -> SqlBenchmarkRecord | None:
    return session.scalars(
        select(SqlBenchmarkRecord).where(SqlBenchmarkRecord.job_id == job_id)
    ).first()


def _none_first(key: tuple[Any, ...]) -> tuple[tuple[bool, Any], ...]:
    return tuple((part is not None, part) for part in key)
