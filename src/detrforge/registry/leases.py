"""Promotion leases: at most one API replica advances a promotion at a time.

A lease is two columns of the promotion's row: the owner (a replica id) and when the lease
expires. Taking and renewing are one conditional UPDATE (the lease is free, expired, or already
the caller's), so two replicas racing for it cannot both win: PostgreSQL re-checks the condition
on the row the other writer committed, and SQLite runs one writer at a time. Expiry is judged by
the database's clock (``database_now``). Only active promotions can be leased; ``finish`` clears
the lease with the verdict. Writes that advance a promotion check the owner themselves
(``PromotionStore.update``/``finish`` with ``owner``), so a replica that lost its lease while it
worked cannot overwrite the new holder's progress.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from detrforge.platform.db import database_now, updated_rows
from detrforge.registry.dbmodels import SqlPromotion
from detrforge.registry.entities import ACTIVE_PROMOTION_STATES, Lease

__all__ = ["ACTIVE_STATE_VALUES", "LeaseStore"]

ACTIVE_STATE_VALUES = [state.value for state in ACTIVE_PROMOTION_STATES]


class LeaseStore:
    """Take, renew and release promotion leases; each call is one short transaction."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def acquire(self, promotion_id: str, owner: str, *, ttl_s: float) -> Lease | None:
        """Take the lease of an active promotion for ``ttl_s`` seconds, or renew it if ``owner``
        holds it already; None when another owner holds an unexpired lease, or the promotion is
        finished or unknown."""
        with self._sessions.begin() as session:
            now = database_now(session)
            expires_at = now + timedelta(seconds=ttl_s)
            result = session.execute(
                update(SqlPromotion)
                .where(
                    SqlPromotion.id == promotion_id,
                    SqlPromotion.state.in_(ACTIVE_STATE_VALUES),
                    or_(
                        SqlPromotion.lease_owner.is_(None),
                        SqlPromotion.lease_owner == owner,
                        SqlPromotion.lease_expires_at <= now,
                    ),
                )
                .values(lease_owner=owner, lease_expires_at=expires_at),
                execution_options={"synchronize_session": False},
            )
            if updated_rows(result) != 1:
                return None
            return Lease(promotion_id=promotion_id, owner=owner, expires_at=expires_at)

    def release(self, promotion_id: str, owner: str) -> bool:
        """Give the lease up at once (a replica shutting down); False if ``owner`` did not hold
        it."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(SqlPromotion)
                .where(SqlPromotion.id == promotion_id, SqlPromotion.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None),
                execution_options={"synchronize_session": False},
            )
            return updated_rows(result) == 1

    def transfer(self, from_owner: str, to_owner: str) -> list[str]:
        """Hand every lease of ``from_owner`` (a replica known to be gone) to ``to_owner``;
        returns the promotion ids."""
        with self._sessions.begin() as session:
            ids = session.scalars(
                update(SqlPromotion)
                .where(
                    SqlPromotion.lease_owner == from_owner,
                    SqlPromotion.state.in_(ACTIVE_STATE_VALUES),
                )
                .values(lease_owner=to_owner)
                .returning(SqlPromotion.id),
                execution_options={"synchronize_session": False},
            ).all()
            return list(ids)

    def holder(self, promotion_id: str) -> Lease | None:
        """The unexpired lease of the promotion, if anyone holds one."""
        with self._sessions() as session:
            row = session.execute(
                select(SqlPromotion.lease_owner, SqlPromotion.lease_expires_at).where(
                    SqlPromotion.id == promotion_id
                )
            ).one_or_none()
            if row is None or row.lease_owner is None or row.lease_expires_at is None:
                return None
            if row.lease_expires_at <= database_now(session):
                return None
            return Lease(promotion_id, row.lease_owner, row.lease_expires_at)
