"""Row helpers the registry stores share: ids, the per-model write lock, version and stage rows.

Every write that reads stages first serializes per model by bumping the model row's ``lock_seq``
at the start of its transaction (``lock_model``): PostgreSQL locks that row, SQLite takes its
write lock, so the reads that follow see every earlier committed change. Unique partial indexes
back this up in the database itself: at most one production and one staging version per model,
and at most one active promotion per model.
"""

from __future__ import annotations

import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from detrforge.platform.errors import NotFoundError
from detrforge.registry.dbmodels import SqlModelVersion, SqlRegisteredModel
from detrforge.registry.entities import Stage

__all__ = ["lock_model", "model_row", "new_id", "slot", "stage_holder", "version_row"]


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def slot(stage: Stage, version: int | None) -> str:
    """How the audit log writes who holds a stage: ``production=v3`` or ``production=none``."""
    return f"{stage.value}={'v' + str(version) if version is not None else 'none'}"


def model_row(session: Session, name: str) -> SqlRegisteredModel:
    row = session.scalar(select(SqlRegisteredModel).where(SqlRegisteredModel.name == name))
    if row is None:
        raise NotFoundError(
            f"registered model {name!r} not found; create it with `detrforge models create`",
            field="model",
        )
    return row


def lock_model(session: Session, name: str) -> SqlRegisteredModel:
    """Take the per-model write lock (see the module docstring) and return the model row."""
    row = model_row(session, name)
    session.execute(
        update(SqlRegisteredModel)
        .where(SqlRegisteredModel.id == row.id)
        .values(lock_seq=SqlRegisteredModel.lock_seq + 1)
    )
    session.refresh(row)
    return row


def version_row(session: Session, model: SqlRegisteredModel, version: int) -> SqlModelVersion:
    row = session.scalar(
        select(SqlModelVersion).where(
            SqlModelVersion.model_id == model.id, SqlModelVersion.version == version
        )
    )
    if row is None:
        raise NotFoundError(f"model {model.name!r} has no version {version}", field="version")
    return row


def stage_holder(
    session: Session, model: SqlRegisteredModel, stage: Stage
) -> SqlModelVersion | None:
    return session.scalar(
        select(SqlModelVersion).where(
            SqlModelVersion.model_id == model.id, SqlModelVersion.stage == stage.value
        )
    )
