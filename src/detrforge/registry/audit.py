"""The append-only audit log: who did what to which model and version, and its CSV export."""

from __future__ import annotations

import builtins
import csv
import io
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Required, TypedDict, Unpack

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, sessionmaker

from detrforge.platform.csv_cells import escape_cell
from detrforge.platform.db import utcnow
from detrforge.platform.errors import InvalidSpecError
from detrforge.platform.limits import check_page
from detrforge.registry.dbmodels import SqlAuditEvent
from detrforge.registry.entities import AuditEvent

__all__ = ["AUDIT_CSV_COLUMNS", "AuditFields", "AuditLog", "audit_to_csv", "write_audit"]

AUDIT_CSV_COLUMNS = (
    "id",
    "at",
    "actor",
    "action",
    "model_name",
    "version",
    "before",
    "after",
    "reason",
    "request_id",
    "details",
)


class AuditFields(TypedDict, total=False):
    """One audit event as callers give it; ``at`` and ``id`` are the log's own."""

    actor: Required[str]
    action: Required[str]
    model_name: str | None
    version: int | None
    before: str | None
    after: str | None
    reason: str | None
    request_id: str | None
    details: Mapping[str, Any] | None


def write_audit(session: Session, **event: Unpack[AuditFields]) -> None:
    """Add one audit row to ``session``: it commits with the change it describes."""
    details = dict(event.pop("details", None) or {})
    session.add(SqlAuditEvent(at=utcnow(), details=details, **event))


class AuditLog:
    """Appends audit events and reads them back, a page at a time."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def record(self, **event: Unpack[AuditFields]) -> None:
        """Append one audit event in its own transaction."""
        with self._sessions.begin() as session:
            write_audit(session, **event)

    def list(
        self,
        *,
        model_name: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        request_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[builtins.list[AuditEvent], int]:
        """One page of audit events, oldest first, and how many match.

        ``action`` matches exactly or, ending in ``.``, as a prefix (``promotion.``).
        """
        check_page(limit, offset)
        filters: builtins.list[ColumnElement[bool]] = []
        if model_name is not None:
            filters.append(SqlAuditEvent.model_name == model_name)
        if action is not None:
            if action.endswith("."):
                filters.append(SqlAuditEvent.action.startswith(action))
            else:
                filters.append(SqlAuditEvent.action == action)
        if actor is not None:
            filters.append(SqlAuditEvent.actor == actor)
        if request_id is not None:
            filters.append(SqlAuditEvent.request_id == request_id)
        for bound, name in ((since, "since"), (until, "until")):
            if bound is not None and bound.tzinfo is None:
                raise InvalidSpecError(
                    f"{name} needs a time zone, e.g. 2026-01-01T00:00:00Z", field=name
                )
        if since is not None:
            filters.append(SqlAuditEvent.at >= since)
        if until is not None:
            filters.append(SqlAuditEvent.at < until)
        with self._sessions() as session:
            total = session.scalar(select(func.count()).select_from(SqlAuditEvent).where(*filters))
            rows = session.scalars(
                select(SqlAuditEvent)
                .where(*filters)
                .order_by(SqlAuditEvent.id)
                .limit(limit)
                .offset(offset)
            ).all()
            return [row.to_entity() for row in rows], int(total or 0)

    @staticmethod
    def to_csv(events: Iterable[AuditEvent]) -> str:
        return audit_to_csv(events)


def audit_to_csv(events: Iterable[AuditEvent]) -> str:
    """Audit events as CSV with a header row; ``details`` is JSON text.

    Text cells that would start a spreadsheet formula are quoted (``csv_cells.escape_cell``).
    """
    buffer = io.StringIO()
    # RFC 4180 line ends: a cell holding CR or LF is then quoted, so the file reads back.
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(AUDIT_CSV_COLUMNS)
    for event in events:
        writer.writerow(
            [
                event.id,
                event.at.isoformat(),
                escape_cell(event.actor),
                escape_cell(event.action),
                escape_cell(event.model_name or ""),
                "" if event.version is None else event.version,
                escape_cell(event.before or ""),
                escape_cell(event.after or ""),
                escape_cell(event.reason or ""),
                escape_cell(event.request_id or ""),
                json.dumps(event.details, sort_keys=True),
            ]
        )
    return buffer.getvalue()
