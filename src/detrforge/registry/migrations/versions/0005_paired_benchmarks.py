"""Benchmark records keep a paired A/B (both arms, the ratios with their intervals) and the load
of the node while they measured.

Revision ID: 0005
Revises: 0004
Create Date: 2025-01-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # Nullable: records measured before (and single-arm ones) have no pair; older ones no load.
    # ADD COLUMN is not an UPDATE: the append-only triggers of migration 0002 do not fire.
    op.add_column("benchmark_records", sa.Column("paired", _JSON, nullable=True))
    op.add_column("benchmark_records", sa.Column("node_load", _JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("benchmark_records") as batch:
        batch.drop_column("node_load")
        batch.drop_column("paired")
