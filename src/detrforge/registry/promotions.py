"""The promotion store: requests (at most one active per model), progress, and the one
transaction that records the gate results and changes the stages.

The rules of a promotion (which evidence, which gates, when it advances) live in
``detrforge.control.promotion``; this module only keeps the rows and their invariants.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc, select
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session, sessionmaker

from detrforge.platform.db import updated_rows, utcnow
from detrforge.platform.errors import (
    ConflictError,
    InvalidSpecError,
    LeaseLostError,
    NotFoundError,
)
from detrforge.registry.audit import AuditLog, write_audit
from detrforge.registry.dbmodels import (
    SqlGatePolicy,
    SqlGateResult,
    SqlPromotion,
    SqlRegisteredModel,
)
from detrforge.registry.entities import (
    ACTIVE_PROMOTION_STATES,
    GateResult,
    ModelVersion,
    Promotion,
    PromotionState,
    Stage,
)
from detrforge.registry.leases import ACTIVE_STATE_VALUES
from detrforge.registry.rows import lock_model, model_row, new_id, slot, stage_holder, version_row

__all__ = ["PromotionStep", "PromotionStore"]

# Stages a version may be promoted from, per destination.
_PROMOTABLE_FROM = {
    Stage.staging: (Stage.none, Stage.archived),
    Stage.production: (Stage.none, Stage.staging, Stage.archived),
}


@dataclass(frozen=True, slots=True)
class PromotionStep:
    """What one step of a promotion reads, from one session: the promotion, the model's gate
    policy (``{}`` when none is set), the candidate, the baseline the promotion pinned and the
    version in production now."""

    promotion: Promotion
    policy: dict[str, Any]
    candidate: ModelVersion
    baseline: ModelVersion | None
    production: ModelVersion | None


class PromotionStore:
    """Promotions and their gate results over one SQLAlchemy session factory."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory
        self._audit = AuditLog(session_factory)

    def _promotion_entity(self, session: Session, row: SqlPromotion) -> Promotion:
        model = session.get(SqlRegisteredModel, row.model_id)
        assert model is not None
        gates = session.scalars(
            select(SqlGateResult)
            .where(SqlGateResult.promotion_id == row.id)
            .order_by(SqlGateResult.position)
        ).all()
        return row.to_entity(model.name, [gate.to_entity() for gate in gates])

    def request(
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
                model = lock_model(session, name)
                candidate = version_row(session, model, version)
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
                        id=new_id("prm"),
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
                    write_audit(
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
        self._audit.record(
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

    def get(self, promotion_id: str) -> Promotion:
        with self._sessions() as session:
            row = session.get(SqlPromotion, promotion_id)
            if row is None:
                raise NotFoundError(f"promotion {promotion_id} not found")
            return self._promotion_entity(session, row)

    def list(
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
                query = query.where(SqlPromotion.model_id == model_row(session, name).id)
            if states is not None:
                query = query.where(
                    SqlPromotion.state.in_([PromotionState(s).value for s in states])
                )
            rows = session.scalars(
                query.order_by(SqlPromotion.created_at.desc(), SqlPromotion.id.desc()).limit(limit)
            ).all()
            return [self._promotion_entity(session, row) for row in rows]

    def update(
        self,
        promotion_id: str,
        *,
        state: PromotionState | None = None,
        baseline_version: int | None = None,
        evidence: Sequence[Mapping[str, Any]] | None = None,
        message: str | None = None,
        owner: str | None = None,
    ) -> Promotion:
        """Progress of an active promotion (state running, its baseline, its evidence); with
        ``owner``, only while that API replica holds the promotion's lease.

        One conditional UPDATE: a finished promotion, or one another replica has leased since,
        is left as it is.

        Raises:
            NotFoundError: no such promotion.
            ConflictError: it is finished (``LeaseLostError``: another replica holds it).
        """
        values: dict[str, Any] = {"updated_at": utcnow()}
        if state is not None:
            values["state"] = PromotionState(state).value
        if baseline_version is not None:
            values["baseline_version"] = baseline_version
        if evidence is not None:
            values["evidence"] = [dict(item) for item in evidence]
        if message is not None:
            values["message"] = message
        statement = (
            sql_update(SqlPromotion)
            .where(SqlPromotion.id == promotion_id, SqlPromotion.state.in_(ACTIVE_STATE_VALUES))
            .values(**values)
        )
        if owner is not None:
            statement = statement.where(SqlPromotion.lease_owner == owner)
        with self._sessions.begin() as session:
            result = session.execute(statement, execution_options={"synchronize_session": False})
            row = session.get(SqlPromotion, promotion_id, populate_existing=True)
            if row is None:
                raise NotFoundError(f"promotion {promotion_id} not found")
            if updated_rows(result) != 1:
                if PromotionState(row.state).is_terminal:
                    raise ConflictError(f"promotion {promotion_id} is already {row.state}")
                raise _lease_lost(row, owner)
            return self._promotion_entity(session, row)

    def finish(
        self,
        promotion_id: str,
        *,
        gate_results: Sequence[GateResult],
        passed: bool,
        message: str,
        before_commit: Callable[[], None] | None = None,
        owner: str | None = None,
    ) -> Promotion:
        """Record the gate results and, if all passed, change the stages: one transaction.

        On success the candidate enters its stage, the version it replaces there is archived,
        the promotion becomes ``applied`` and one audit row tells it all. If production changed
        while the gates ran (a rollback, say), the promotion fails instead: its verdict was
        against a baseline that no longer holds. A finished promotion is returned unchanged.
        ``before_commit`` runs just before the commit (a failpoint for crash tests). With
        ``owner``, only the API replica holding the promotion's lease may finish it; the lease
        ends with it.

        Raises:
            LeaseLostError: another replica holds the lease now.
        """
        with self._sessions.begin() as session:
            row = session.get(SqlPromotion, promotion_id)
            if row is None:
                raise NotFoundError(f"promotion {promotion_id} not found")
            model = session.get(SqlRegisteredModel, row.model_id)
            assert model is not None
            model = lock_model(session, model.name)
            # Row-locked on PostgreSQL: no replica takes the lease between this check and commit.
            session.refresh(row, with_for_update=True)
            if PromotionState(row.state).is_terminal:
                return self._promotion_entity(session, row)
            if owner is not None and row.lease_owner != owner:
                raise _lease_lost(row, owner)
            to = Stage(row.to_stage)
            candidate = version_row(session, model, row.version)
            production = stage_holder(session, model, Stage.production)
            production_now = production.version if production else None
            if passed and production_now != row.baseline_version:
                passed = False
                message = (
                    f"production changed from {slot(Stage.production, row.baseline_version)} "
                    f"to {slot(Stage.production, production_now)} while the gates ran; request "
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
                        id=new_id("gate"),
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
            holder = stage_holder(session, model, to)
            before = slot(to, holder.version if holder else None)
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
                after = slot(to, candidate.version)
                action = "promotion.apply"
            else:
                row.state = PromotionState.failed.value
                after = before
                action = "promotion.fail"
            row.message = message
            row.updated_at = now
            row.finished_at = now
            row.lease_owner = row.lease_expires_at = None
            write_audit(
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

    def step(self, promotion_id: str) -> PromotionStep:
        """The promotion with everything its next step reads, in one session."""
        with self._sessions() as session:
            row = session.get(SqlPromotion, promotion_id)
            if row is None:
                raise NotFoundError(f"promotion {promotion_id} not found")
            model = session.get(SqlRegisteredModel, row.model_id)
            assert model is not None
            policy = session.get(SqlGatePolicy, model.id)
            baseline = (
                version_row(session, model, row.baseline_version).to_entity(model.name)
                if row.baseline_version is not None
                else None
            )
            production = stage_holder(session, model, Stage.production)
            return PromotionStep(
                promotion=self._promotion_entity(session, row),
                policy=dict(policy.policy) if policy else {},
                candidate=version_row(session, model, row.version).to_entity(model.name),
                baseline=baseline,
                production=production.to_entity(model.name) if production else None,
            )


def _lease_lost(row: SqlPromotion, owner: str | None) -> LeaseLostError:
    return LeaseLostError(
        f"promotion {row.id} is leased to API replica {row.lease_owner}; replica {owner} no "
        "longer advances it"
    )


def _busy(name: str, active: SqlPromotion) -> ConflictError:
    return ConflictError(
        f"model {name!r} already has promotion {active.id} {active.state} (v{active.version} to "
        f"{active.to_stage}); wait for it to finish, then request again",
        details=[{"promotion_id": active.id, "state": active.state}],
    )
