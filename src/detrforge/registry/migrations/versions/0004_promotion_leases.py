"""Promotion leases: which API replica advances a promotion, and until when.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: a promotion nobody holds (new, or its holder released it) has neither.
    # SQLite adds columns in place (ALTER TABLE ADD COLUMN): the table and its indexes stay.
    op.add_column("promotions", sa.Column("lease_owner", sa.String(255), nullable=True))
    op.add_column(
        "promotions", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("promotions") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
