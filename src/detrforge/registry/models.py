"""The model registry: registered models, versions and their stages, gate policies, promotions
with their gate results, rollback, and the append-only audit log.

Every write that reads stages first serializes per model by bumping the model row's
``lock_seq`` at the start of its transaction: PostgreSQL locks that row, SQLite takes its write
lock, so the reads that follow see every earlier committed change. Unique partial indexes back
this up in the database itself: at most one production and one staging version per model, and
at most one active promotion per model.
"""

from __future__ import annotations

import builtins
import csv
import io
import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Engine, bindparam, exc, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from detrforge.platform.csv_cells import escape_cell
from detrforge.platform.db import utcnow
from detrforge.platform.errors import ConflictError, InvalidSpecError, NotFoundError
from detrforge.platform.limits import check_page
from detrforge.registry.dbmodels import (
    SqlAuditEvent,
    SqlGatePolicy,
    SqlGateResult,
    SqlModelVersion,
    SqlPromotion,
    SqlRegisteredModel,
)
from detrforge.registry.entities import (
    ACTIVE_PROMOTION_STATES,
    AuditEvent,
    GateResult,
    ModelVersion,
    Promotion,
    PromotionState,
    RegisteredModel,
    Stage,
)

__all__ = ["AUDIT_CSV_COLUMNS", "MODEL_NAME_PATTERN", "ModelRegistry", "audit_to_csv"]

MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
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
# Stages a version may be promoted from, per destination.
_PROMOTABLE_FROM = {
    Stage.staging: (Stage.none, Stage.archived),
    Stage.production: (Stage.none, Stage.staging, Stage.archived),
}


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def _slot(stage: Stage, version: int | None) -> str:
    """How the audit log writes who holds a stage: ``production=v3`` or ``production=none``."""
    return f"{stage.value}={'v' + str(version) if version is not None else 'none'}"


class ModelRegistry:
    """Models, versions, policies, promotions and audit over one SQLAlchemy session factory."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _model_row(session: Session, name: str) -> SqlRegisteredModel:
        row = session.scalar(select(SqlRegisteredModel).where(SqlRegisteredModel.name == name))
        if row is None:
            raise NotFoundError(
                f"registered model {name!r} not found; create it with `detrforge models create`",
                field="model",
            )
        return row

    def _lock_model(self, session: Session, name: str) -> SqlRegisteredModel:
        """Take the per-model write lock (see the module docstring) and return the model row."""
        row = self._model_row(session, name)
        session.execute(
            update(SqlRegisteredModel)
            .where(SqlRegisteredModel.id == row.id)
            .values(lock_seq=SqlRegisteredModel.lock_seq + 1)
        )
        session.refresh(row)
        return row

    @staticmethod
    def _version_row(session: Session, model: SqlRegisteredModel, version: int) -> SqlModelVersion:
        row = session.scalar(
            select(SqlModelVersion).where(
                SqlModelVersion.model_id == model.id, SqlModelVersion.version == version
            )
        )
        if row is None:
            raise NotFoundError(f"model {model.name!r} has no version {version}", field="version")
        return row

    @staticmethod
    def _stage_holder(
        session: Session, model: SqlRegisteredModel, stage: Stage
    ) -> SqlModelVersion | None:
        return session.scalar(
            select(SqlModelVersion).where(
                SqlModelVersion.model_id == model.id, SqlModelVersion.stage == stage.value
            )
        )

    @staticmethod
    def _audit(
        session: Session,
        *,
        actor: str,
        action: str,
        model_name: str | None,
        version: int | None = None,
        before: str | None = None,
        after: str | None = None,
        reason: str | None = None,
        request_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        session.add(
            SqlAuditEvent(
                at=utcnow(),
                actor=actor,
                action=action,
                model_name=model_name,
                version=version,
                before=before,
                after=after,
                reason=reason,
                request_id=request_id,
                details=dict(details or {}),
            )
        )

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

    def _promotion_entity(self, session: Session, row: SqlPromotion) -> Promotion:
        model = session.get(SqlRegisteredModel, row.model_id)
        assert model is not None
        gates = session.scalars(
            select(SqlGateResult)
            .where(SqlGateResult.promotion_id == row.id)
            .order_by(SqlGateResult.position)
        ).all()
        return row.to_entity(model.name, [gate.to_entity() for gate in gates])

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
                    id=_new_id("mdl"),
                    name=name,
                    description=description,
                    created_by=actor,
                    created_at=now,
                    updated_at=now,
                    lock_seq=0,
                )
                session.add(row)
                self._audit(
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
            return self._model_entity(session, self._model_row(session, name))

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
            model = self._lock_model(session, name)
            row = session.get(SqlGatePolicy, model.id)
            before = json.dumps(row.policy, sort_keys=True) if row else None
            if row is None:
                row = SqlGatePolicy(model_id=model.id)
                session.add(row)
            row.policy = dict(policy)
            row.updated_by = actor
            row.updated_at = utcnow()
            self._audit(
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
            model = self._lock_model(session, name)
            latest = session.scalar(
                select(func.max(SqlModelVersion.version)).where(
                    SqlModelVersion.model_id == model.id
                )
            )
            now = utcnow()
            row = SqlModelVersion(
                id=_new_id("ver"),
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
            self._audit(
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
            model = self._model_row(session, name)
            return self._version_row(session, model, version).to_entity(name)

    def list_versions(
        self, name: str, *, stage: Stage | None = None
    ) -> builtins.list[ModelVersion]:
        """The model's versions, newest first, optionally only those in ``stage``."""
        with self._sessions() as session:
            model = self._model_row(session, name)
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
            raise TypeError("ModelRegistry needs a session factory bound to an Engine")
        with bind.connect() as conn:
            row = conn.execute(
                _VERSION_IN_STAGE, {"name": name, "stage": Stage(stage).value}
            ).one_or_none()
        if row is None:
            with self._sessions() as session:
                self._model_row(session, name)  # NotFoundError for an unknown model
            return None
        # A row of the table's columns has the ORM object's attribute names and types.
        return SqlModelVersion.to_entity(cast(SqlModelVersion, row), name)

    def set_mlflow_version(self, name: str, version: int, mlflow_version: str) -> None:
        """Remember which MLflow model version mirrors ``version``."""
        with self._sessions.begin() as session:
            model = self._model_row(session, name)
            self._version_row(session, model, version).mlflow_version = mlflow_version

    # -- promotions ----------------------------------------------------------------------------
    def request_promotion(
        self,
        name: str,
        version: int,
        to_stage: Stage | str,
        *,
        actor: str,
        reason: str = "",
        request_id: str | None = None,
    ) -> Promotion:
        """Record a pending promotion; at most one is active per model.

        A refused request is audited too (``promotion.rejected``), so the log accounts for
        every request.

        Raises:
            InvalidSpecError: ``to_stage`` is not staging or production.
            NotFoundError: unknown model or version.
            ConflictError: another promotion of this model is active, or the version is already
                in ``to_stage``.
        """
        try:
            to = Stage(to_stage)
        except ValueError:
            to = Stage.none
        if to not in _PROMOTABLE_FROM:
            raise InvalidSpecError(
                f"cannot promote to {to_stage!r}: use 'staging' or 'production' (rollback "
                "restores a previous production version)",
                field="to",
            )
        refusal: ConflictError | None = None
        try:
            with self._sessions.begin() as session:
                model = self._lock_model(session, name)
                candidate = self._version_row(session, model, version)
                stage = Stage(candidate.stage)
                active = session.scalar(
                    select(SqlPromotion).where(
                        SqlPromotion.model_id == model.id,
                        SqlPromotion.state.in_([s.value for s in ACTIVE_PROMOTION_STATES]),
                    )
                )
                if active is not None:
                    refusal = _busy(name, active)
                elif stage not in _PROMOTABLE_FROM[to]:
                    refusal = ConflictError(
                        f"model {name!r} v{version} is in {stage.value}; it cannot be promoted "
                        f"to {to.value}",
                        field="to",
                    )
                if refusal is None:
                    now = utcnow()
                    row = SqlPromotion(
                        id=_new_id("prm"),
                        model_id=model.id,
                        version=version,
                        from_stage=stage.value,
                        to_stage=to.value,
                        state=PromotionState.pending.value,
                        actor=actor,
                        reason=reason,
                        request_id=request_id,
                        baseline_version=None,
                        evidence=[],
                        message=None,
                        created_at=now,
                        updated_at=now,
                        finished_at=None,
                    )
                    session.add(row)
                    self._audit(
                        session,
                        actor=actor,
                        action="promotion.request",
                        model_name=name,
                        version=version,
                        before=stage.value,
                        after=to.value,
                        reason=reason,
                        request_id=request_id,
                        details={"promotion_id": row.id},
                    )
                    session.flush()
                    return self._promotion_entity(session, row)
        except exc.IntegrityError:
            # The unique index caught a race the lock did not (it cannot today; kept as proof).
            refusal = ConflictError(
                f"model {name!r} already has an active promotion; wait for it to finish"
            )
        assert refusal is not None
        self.record(
            actor=actor,
            action="promotion.reject",
            model_name=name,
            version=version,
            after=to.value,
            reason=reason,
            request_id=request_id,
            details={"error": refusal.message},
        )
        raise refusal

    def get_promotion(self, promotion_id: str) -> Promotion:
        with self._sessions() as session:
            row = session.get(SqlPromotion, promotion_id)
            if row is None:
                raise NotFoundError(f"promotion {promotion_id} not found")
            return self._promotion_entity(session, row)

    def list_promotions(
        self,
        name: str | None = None,
        *,
        states: Iterable[PromotionState] | None = None,
        limit: int = 100,
    ) -> builtins.list[Promotion]:
        """Promotions, newest first; ``states`` filters (e.g. the active ones)."""
        with self._sessions() as session:
            query = select(SqlPromotion)
            if name is not None:
                query = query.where(SqlPromotion.model_id == self._model_row(session, name).id)
            if states is not None:
                query = query.where(
                    SqlPromotion.state.in_([PromotionState(s).value for s in states])
                )
            rows = session.scalars(
                query.order_by(SqlPromotion.created_at.desc(), SqlPromotion.id.desc()).limit(limit)
            ).all()
            return [self._promotion_entity(session, row) for row in rows]

    def update_promotion(
        self,
        promotion_id: str,
        *,
        state: PromotionState | None = None,
        baseline_version: int | None = None,
        evidence: Sequence[Mapping[str, Any]] | None = None,
        message: str | None = None,
    ) -> Promotion:
        """Progress of an active promotion (state running, its baseline, its evidence)."""
        with self._sessions.begin() as session:
            row = session.get(SqlPromotion, promotion_id)
            if row is None:
                raise NotFoundError(f"promotion {promotion_id} not found")
            if PromotionState(row.state).is_terminal:
                raise ConflictError(f"promotion {promotion_id} is already {row.state}")
            if state is not None:
                row.state = PromotionState(state).value
            if baseline_version is not None:
                row.baseline_version = baseline_version
            if evidence is not None:
                row.evidence = [dict(item) for item in evidence]
            if message is not None:
                row.message = message
            row.updated_at = utcnow()
            session.flush()
            return self._promotion_entity(session, row)

    def finish_promotion(
        self,
        promotion_id: str,
        *,
        gate_results: Sequence[GateResult],
        passed: bool,
        message: str,
        before_commit: Callable[[], None] | None = None,
    ) -> Promotion:
        """Record the gate results and, if all passed, change the stages: one transaction.

        On success the candidate enters its stage, the version it replaces there is archived,
        the promotion becomes ``applied`` and one audit row tells it all. If production changed
        while the gates ran (a rollback, say), the promotion fails instead: its verdict was
        against a baseline that no longer holds. A finished promotion is returned unchanged.
        ``before_commit`` runs just before the commit (a failpoint for crash tests).
        """
        with self._sessions.begin() as session:
            row = session.get(SqlPromotion, promotion_id)
            if row is None:
                raise NotFoundError(f"promotion {promotion_id} not found")
            model = session.get(SqlRegisteredModel, row.model_id)
            assert model is not None
            model = self._lock_model(session, model.name)
            session.refresh(row)
            if PromotionState(row.state).is_terminal:
                return self._promotion_entity(session, row)
            to = Stage(row.to_stage)
            candidate = self._version_row(session, model, row.version)
            production = self._stage_holder(session, model, Stage.production)
            production_now = production.version if production else None
            if passed and production_now != row.baseline_version:
                passed = False
                message = (
                    f"production changed from {_slot(Stage.production, row.baseline_version)} "
                    f"to {_slot(Stage.production, production_now)} while the gates ran; request "
                    "the promotion again"
                )
            elif passed and candidate.stage != row.from_stage:
                passed = False
                message = (
                    f"v{row.version} moved from {row.from_stage} to {candidate.stage} while the "
                    "gates ran; request the promotion again"
                )
            now = utcnow()
            for position, result in enumerate(gate_results):
                session.add(
                    SqlGateResult(
                        id=_new_id("gate"),
                        promotion_id=row.id,
                        position=position,
                        gate=result.gate,
                        target=result.target,
                        metric=result.metric,
                        candidate=result.candidate,
                        baseline=result.baseline,
                        threshold=result.threshold,
                        passed=result.passed,
                        detail=result.detail,
                        evidence=result.evidence,
                        created_at=now,
                    )
                )
            holder = self._stage_holder(session, model, to)
            before = _slot(to, holder.version if holder else None)
            details: dict[str, Any] = {
                "promotion_id": row.id,
                "gates": [
                    {"gate": g.gate, "target": g.target, "passed": g.passed, "detail": g.detail}
                    for g in gate_results
                ],
            }
            if passed:
                if holder is not None and holder.id != candidate.id:
                    holder.stage = Stage.archived.value
                    holder.stage_changed_at = now
                    details["archived_version"] = holder.version
                    session.flush()  # free the stage's unique slot before taking it
                if to == Stage.production:
                    candidate.replaced_version = holder.version if holder else None
                candidate.stage = to.value
                candidate.stage_changed_at = now
                row.state = PromotionState.applied.value
                after = _slot(to, candidate.version)
                action = "promotion.apply"
            else:
                row.state = PromotionState.failed.value
                after = before
                action = "promotion.fail"
            row.message = message
            row.updated_at = now
            row.finished_at = now
            self._audit(
                session,
                actor=row.actor,
                action=action,
                model_name=model.name,
                version=row.version,
                before=before,
                after=after,
                reason=message,
                request_id=row.request_id,
                details=details,
            )
            session.flush()
            if before_commit is not None:
                before_commit()
            return self._promotion_entity(session, row)

    # -- rollback ------------------------------------------------------------------------------
    def rollback(
        self, name: str, *, actor: str, reason: str = "", request_id: str | None = None
    ) -> ModelVersion:
        """Re-point production to the version the current one replaced; no gates; audited.

        Raises:
            ConflictError: no production version, or it replaced nothing (nothing to return to).
        """
        with self._sessions.begin() as session:
            model = self._lock_model(session, name)
            current = self._stage_holder(session, model, Stage.production)
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
            previous = self._version_row(session, model, current.replaced_version)
            now = utcnow()
            current.stage = Stage.archived.value
            current.stage_changed_at = now
            session.flush()
            previous_stage = previous.stage
            previous.stage = Stage.production.value
            previous.stage_changed_at = now
            self._audit(
                session,
                actor=actor,
                action="rollback",
                model_name=name,
                version=previous.version,
                before=_slot(Stage.production, current.version),
                after=_slot(Stage.production, previous.version),
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

    # -- audit ---------------------------------------------------------------------------------
    def record(
        self,
        *,
        actor: str,
        action: str,
        model_name: str | None = None,
        version: int | None = None,
        before: str | None = None,
        after: str | None = None,
        reason: str | None = None,
        request_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one audit event in its own transaction."""
        with self._sessions.begin() as session:
            self._audit(
                session,
                actor=actor,
                action=action,
                model_name=model_name,
                version=version,
                before=before,
                after=after,
                reason=reason,
                request_id=request_id,
                details=details,
            )

    def audit(
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


def _model_exists(name: str) -> ConflictError:
    return ConflictError(f"registered model {name!r} exists; choose another name", field="name")


def _busy(name: str, active: SqlPromotion) -> ConflictError:
    return ConflictError(
        f"model {name!r} already has promotion {active.id} {active.state} (v{active.version} to "
        f"{active.to_stage}); wait for it to finish, then request again",
        details=[{"promotion_id": active.id, "state": active.state}],
    )
