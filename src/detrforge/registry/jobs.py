"""Persistence of jobs: create, read, list and record progress. No launching, no policy."""

from __future__ import annotations

import builtins
import re
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, exc, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from detrforge.platform.db import utcnow
from detrforge.platform.errors import InvalidSpecError, NotFoundError
from detrforge.platform.limits import check_page
from detrforge.registry.dbmodels import SqlJob
from detrforge.registry.entities import Job, JobState

__all__ = ["UPDATABLE_FIELDS", "JobStore", "new_job_id"]

# Kinds whose id prefix is not simply their first two letters.
_ID_PREFIXES = {"finetune": "ft"}
_KIND_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
_TERMINAL_STATE_VALUES = [state.value for state in JobState if state.is_terminal]

UPDATABLE_FIELDS = frozenset(
    {
        "state",
        "ray_submission_id",
        "mlflow_run_id",
        "error",
        "progress",
        "metrics",
        "checkpoint_uri",
        "model_sha256",
        "model_uri",
        "started_at",
        "finished_at",
    }
)
_DICT_FIELDS = frozenset({"progress", "metrics"})
_DATETIME_FIELDS = frozenset({"started_at", "finished_at"})


def new_job_id(kind: str) -> str:
    """A fresh job id: a short kind prefix and 12 random hex digits, e.g. ``ft-3f9c0a1b2d4e``."""
    prefix = _ID_PREFIXES.get(kind, kind[:2])
    return f"{prefix}-{secrets.token_hex(6)}"


class JobStore:
    """CRUD over the ``jobs`` table; every method runs in its own short transaction."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def create(
        self,
        *,
        kind: str,
        spec: dict[str, Any],
        created_by: str,
        dataset_fingerprint: str | None,
        job_id: str | None = None,
    ) -> Job:
        """Record a new ``PENDING`` job, under ``job_id`` when the caller chose one already;
        a job on record under that id is returned as it is (the caller recorded it before).

        Raises:
            InvalidSpecError: ``kind`` is not a lower-case identifier of at most 32 characters.
        """
        if not _KIND_PATTERN.fullmatch(kind):
            raise InvalidSpecError(
                f"job kind {kind!r} is invalid: use a lower-case identifier such as 'finetune'",
                field="kind",
            )
        now = utcnow()
        row = SqlJob(
            id=job_id or new_job_id(kind),
            kind=kind,
            state=JobState.PENDING.value,
            spec=dict(spec),
            created_by=created_by,
            dataset_fingerprint=dataset_fingerprint,
            progress={},
            metrics={},
            created_at=now,
            updated_at=now,
        )
        existing = self.find(job_id) if job_id is not None else None
        if existing is not None:
            return existing
        try:
            with self._sessions.begin() as session:
                session.add(row)
                session.flush()
                return row.to_entity()
        except exc.IntegrityError:
            existing = self.find(row.id) if job_id is not None else None
            if existing is None:  # a random id cannot collide; something else is wrong
                raise
            return existing  # recorded by a racing caller a moment ago

    def get(self, job_id: str) -> Job:
        """The job with id ``job_id``.

        Raises:
            NotFoundError: no such job.
        """
        with self._sessions() as session:
            row = session.get(SqlJob, job_id)
            if row is None:
                raise NotFoundError(f"job {job_id} not found")
            return row.to_entity()

    def find(self, job_id: str) -> Job | None:
        """The job with id ``job_id``, or None when there is none."""
        with self._sessions() as session:
            row = session.get(SqlJob, job_id)
            return None if row is None else row.to_entity()

    def list(
        self,
        *,
        state: JobState | None = None,
        kind: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[builtins.list[Job], int]:
        """One page of jobs, newest first, and the number of jobs matching the filters."""
        check_page(limit, offset)
        filters: builtins.list[ColumnElement[bool]] = []
        if state is not None:
            filters.append(SqlJob.state == JobState(state).value)
        if kind is not None:
            filters.append(SqlJob.kind == kind)
        with self._sessions() as session:
            total = session.scalar(select(func.count()).select_from(SqlJob).where(*filters))
            rows = session.scalars(
                select(SqlJob)
                .where(*filters)
                .order_by(SqlJob.created_at.desc(), SqlJob.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
            return [row.to_entity() for row in rows], int(total or 0)

    def list_nonterminal(self) -> builtins.list[Job]:
        """Every job not yet in a final state, oldest first: what a restarted API reconciles."""
        with self._sessions() as session:
            rows = session.scalars(
                select(SqlJob)
                .where(SqlJob.state.not_in(_TERMINAL_STATE_VALUES))
                .order_by(SqlJob.created_at, SqlJob.id)
            ).all()
            return [row.to_entity() for row in rows]

    def update(self, job_id: str, *, expected_state: JobState | None = None, **fields: Any) -> Job:
        """Record new values for some of ``UPDATABLE_FIELDS`` and return the job as stored.

        A terminal state is final: an update that would move a terminal job to another state is
        ignored as a whole and the job comes back unchanged. The check happens inside the UPDATE
        statement itself, so a racing writer (the reconciler vs a cancel request) cannot undo it.
        With ``expected_state`` the update applies only if the job is still in that state (a
        reconciler writes what it saw change; when another replica's reconciler recorded that
        change first, this one's is ignored and it gets the job as the other left it).

        Raises:
            NotFoundError: no such job.
            TypeError: a field that does not exist or may not be updated.
        """
        unknown = set(fields) - UPDATABLE_FIELDS
        if unknown:
            raise TypeError(f"cannot update job field(s): {', '.join(sorted(unknown))}")
        values = {name: _check_value(name, value) for name, value in fields.items()}
        values["updated_at"] = utcnow()
        statement = update(SqlJob).where(SqlJob.id == job_id).values(**values)
        if expected_state is not None:
            statement = statement.where(SqlJob.state == JobState(expected_state).value)
        if "state" in values:
            statement = statement.where(
                or_(
                    SqlJob.state.not_in(_TERMINAL_STATE_VALUES),
                    SqlJob.state == values["state"],
                )
            )
        with self._sessions.begin() as session:
            session.execute(statement, execution_options={"synchronize_session": False})
            row = session.get(SqlJob, job_id, populate_existing=True)
            if row is None:
                raise NotFoundError(f"job {job_id} not found")
            return row.to_entity()


def _check_value(name: str, value: Any) -> Any:
    if name == "state":
        return JobState(value).value
    if name in _DICT_FIELDS:
        if not isinstance(value, dict):
            raise TypeError(f"job field {name} must be a dict, not {type(value).__name__}")
        return dict(value)
    if name in _DATETIME_FIELDS and value is not None:
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise TypeError(f"job field {name} must be a timezone-aware datetime or None")
    return value
