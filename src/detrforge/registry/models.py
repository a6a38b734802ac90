"""The model store: registered models, their gate policies, versions and stages, and rollback.

Writes that read stages take the per-model lock first (``rows.lock_model``); promotions, which
also change stages, are kept by ``promotions.PromotionStore``; audit rows by ``audit``.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Engine, bindparam, exc, func, select
from sqlalchemy.orm import Session, sessionmaker

from detrforge.platform.db import utcnow
from detrforge.platform.errors import ConflictError, InvalidSpecError
from detrforge.platform.limits import check_page
from detrforge.registry.audit import write_audit
from detrforge.registry.dbmodels import SqlGatePolicy, SqlModelVersion, SqlRegisteredModel
from detrforge.registry.entities import ModelVersion, RegisteredModel, Stage
from detrforge.registry.rows import lock_model, model_row, new_id, slot, stage_holder, version_row

__all__ = ["MODEL_NAME_PATTERN", "ModelStore"]

MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# "Which version holds this stage": what a serving fleet polls, so a prebuilt Core statement on
# a plain connection (no ORM session). Columns only, so the row reads like the ORM object.
_VERSION_IN_STAGE = (
    select(*SqlModelVersion.__table__.c)
    .join(SqlRegisteredModel, SqlRegisteredModel.id == SqlModelVersion.model_id)
    .where(
        SqlRegisteredModel.name == bindparam("name"),
        SqlModelVersion.stage == bindparam("stage"),
    )
)


class ModelStore:
    """Models, policies and versions over one SQLAlchemy session factory."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def _model_entity(self, session: Session, row: SqlRegisteredModel) -> RegisteredModel:
        policy = session.get(SqlGatePolicy, row.id)
        return RegisteredModel(
            id=row.id,
            name=row.name,
            description=row.description,
            created_by=row.created_by,
            created_at=row.created_at,
            updated_at=row.updated_at,
            policy=dict(policy.policy) if policy else None,
            policy_updated_by=policy.updated_by if policy else None,
            policy_updated_at=policy.updated_at if policy else None,
        )

    # -- models --------------------------------------------------------------------------------
    def create_model(
        self, name: str, *, description: str = "", actor: str, request_id: str | None = None
    ) -> RegisteredModel:
        """Create a registered model.

        Raises:
            InvalidSpecError: the name is not usable.
            ConflictError: a model with this name exists.
        """
        if not isinstance(name, str) or not MODEL_NAME_PATTERN.fullmatch(name):
            raise InvalidSpecError(
                f"model name {name!r} is invalid: use 1 to 128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit (e.g. 'shelf-detector')",
                field="name",
            )
        now = utcnow()
        try:
            with self._sessions.begin() as session:
                if session.scalar(
                    select(SqlRegisteredModel.id).where(SqlRegisteredModel.name == name)
                ):
                    raise _model_exists(name)
                row = SqlRegisteredModel(
                    id=new_id("mdl"),
                    name=name,
                    description=description,
                    created_by=actor,
                    created_at=now,
                    updated_at=now,
                    lock_seq=0,
                )
                session.add(row)
                write_audit(
                    session,
                    actor=actor,
                    action="model.create",
                    model_name=name,
                    request_id=request_id,
                    details={"description": description},
                )
                session.flush()
                return self._model_entity(session, row)
        except exc.IntegrityError:
            raise _model_exists(name) from None

    def get_model(self, name: str) -> RegisteredModel:
        with self._sessions() as session:
            return self._model_entity(session, model_row(session, name))

    def list_models(
        self, *, limit: int = 100, offset: int = 0
    ) -> tuple[builtins.list[RegisteredModel], int]:
        """One page of models by name, and how many there are."""
        check_page(limit, offset)
        with self._sessions() as session:
            total = session.scalar(select(func.count()).select_from(SqlRegisteredModel))
            rows = session.scalars(
                select(SqlRegisteredModel)
                .order_by(SqlRegisteredModel.name)
                .limit(limit)
                .offset(offset)
            ).all()
            return [self._model_entity(session, row) for row in rows], int(total or 0)

    # -- policy --------------------------------------------------------------------------------
    def set_policy(
        self,
        name: str,
        policy: Mapping[str, Any],
        *,
        actor: str,
        reason: str | None = None,
        request_id: str | None = None,
    ) -> RegisteredModel:
        """Replace the model's gate policy (already validated by the caller); audited."""
        with self._sessions.begin() as session:
            model = lock_model(session, name)
            row = session.get(SqlGatePolicy, model.id)
            before = json.dumps(row.policy, sort_keys=True) if row else None
            if row is None:
                row = SqlGatePolicy(model_id=model.id)
                session.add(row)
            row.policy = dict(policy)
            row.updated_by = actor
            row.updated_at = utcnow()
            write_audit(
                session,
                actor=actor,
                action="policy.set",
                model_name=name,
                before=before,
                after=json.dumps(dict(policy), sort_keys=True),
                reason=reason,
                request_id=request_id,
            )
            session.flush()
            return self._model_entity(session, model)

    # -- versions ------------------------------------------------------------------------------
    def register_version(
        self,
        name: str,
        *,
        checkpoint_uri: str,
        checkpoint_sha256: str,
        checkpoint_bytes: int,
        model_size: str,
        resolution: int,
        class_names: Sequence[str] = (),
        dataset_fingerprint: str | None = None,
        params: Mapping[str, Any] | None = None,
        source_job_id: str | None = None,
        source_trial_id: str | None = None,
        mlflow_run_id: str | None = None,
        description: str = "",
        source_uri: str | None = None,
        actor: str,
        request_id: str | None = None,
    ) -> ModelVersion:
        """Record a new version (the next number) in stage ``none``; audited.

        ``source_uri`` (where the bytes at ``checkpoint_uri`` were copied from) is kept in the
        audit row only.
        """
        with self._sessions.begin() as session:
            model = lock_model(session, name)
            latest = session.scalar(
                select(func.max(SqlModelVersion.version)).where(
                    SqlModelVersion.model_id == model.id
                )
            )
            now = utcnow()
            row = SqlModelVersion(
                id=new_id("ver"),
                model_id=model.id,
                version=int(latest or 0) + 1,
                stage=Stage.none.value,
                checkpoint_uri=checkpoint_uri,
                checkpoint_sha256=checkpoint_sha256,
                checkpoint_bytes=int(checkpoint_bytes),
                model_size=model_size,
                resolution=int(resolution),
                class_names=list(class_names),
                dataset_fingerprint=dataset_fingerprint,
                params=dict(params or {}),
                source_job_id=source_job_id,
                source_trial_id=source_trial_id,
                mlflow_run_id=mlflow_run_id,
                mlflow_version=None,
                description=description,
                created_by=actor,
                created_at=now,
                stage_changed_at=now,
                replaced_version=None,
            )
            session.add(row)
            write_audit(
                session,
                actor=actor,
                action="version.register",
                model_name=name,
                version=row.version,
                after=Stage.none.value,
                request_id=request_id,
                details={
                    "checkpoint_uri": checkpoint_uri,
                    "source_uri": source_uri,
                    "checkpoint_sha256": checkpoint_sha256,
                    "source_job_id": source_job_id,
                    "source_trial_id": source_trial_id,
                    "mlflow_run_id": mlflow_run_id,
                },
            )
            session.flush()
            return row.to_entity(name)

    def get_version(self, name: str, version: int) -> ModelVersion:
        with self._sessions() as session:
            model = model_row(session, name)
            return version_row(session, model, version).to_entity(name)

    def list_versions(
        self, name: str, *, stage: Stage | None = None
    ) -> builtins.list[ModelVersion]:
        """The model's versions, newest first, optionally only those in ``stage``."""
        with self._sessions() as session:
            model = model_row(session, name)
            query = select(SqlModelVersion).where(SqlModelVersion.model_id == model.id)
            if stage is not None:
                query = query.where(SqlModelVersion.stage == Stage(stage).value)
            rows = session.scalars(query.order_by(SqlModelVersion.version.desc())).all()
            return [row.to_entity(name) for row in rows]

    def version_in_stage(self, name: str, stage: Stage) -> ModelVersion | None:
        """The version holding ``staging`` or ``production``, or None: one indexed query.

        It reads committed data only (its own connection, never a caller's open transaction),
        so a promotion or rollback is visible to the next call once it commits.
        """
        bind = self._sessions.kw.get("bind")
        if not isinstance(bind, Engine):
            raise TypeError("ModelStore needs a session factory bound to an Engine")
        with bind.connect() as conn:
            row = conn.execute(
                _VERSION_IN_STAGE, {"name": name, "stage": Stage(stage).value}
            ).one_or_none()
        if row is None:
            with self._sessions() as session:
                model_row(session, name)  # NotFoundError for an unknown model
            return None
        # A row of the table's columns has the ORM object's attribute names and types.
        return SqlModelVersion.to_entity(cast(SqlModelVersion, row), name)

    def set_mlflow_version(self, name: str, version: int, mlflow_version: str) -> None:
        """Remember which MLflow model version mirrors ``version``."""
        with self._sessions.begin() as session:
            model = model_row(session, name)
            version_row(session, model, version).mlflow_version = mlflow_version

    # -- rollback ------------------------------------------------------------------------------
    def rollback(
        self, name: str, *, actor: str, reason: str = "", request_id: str | None = None
    ) -> ModelVersion:
        """Re-point production to the version the current one replaced; no gates; audited.

        Raises:
            ConflictError: no production version, or it replaced nothing (nothing to return to).
        """
        with self._sessions.begin() as session:
            model = lock_model(session, name)
            current = stage_holder(session, model, Stage.production)
            if current is None:
                raise ConflictError(
                    f"model {name!r} has no production version to roll back", field="model"
                )
            if current.replaced_version is None:
                raise ConflictError(
                    f"model {name!r} v{current.version} is the first production version: there "
                    "is no previous production version to roll back to",
                    field="model",
                )
            previous = version_row(session, model, current.replaced_version)
            now = utcnow()
            current.stage = Stage.archived.value
            current.stage_changed_at = now
            session.flush()
            previous_stage = previous.stage
            previous.stage = Stage.production.value
            previous.stage_changed_at = now
            write_audit(
                session,
                actor=actor,
                action="rollback",
                model_name=name,
                version=previous.version,
                before=slot(Stage.production, current.version),
                after=slot(Stage.production, previous.version),
                reason=reason,
                request_id=request_id,
                details={
                    "from_version": current.version,
                    "to_version": previous.version,
                    "to_version_stage_before": previous_stage,
                },
            )
            session.flush()
            return previous.to_entity(name)


def _model_exists(name: str) -> ConflictError:
    return ConflictError(f"registered model {name!r} exists; choose another name", field="name")
