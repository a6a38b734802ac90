"""Benchmark records keep a segmentation model's mask decoding time (upsampling each mask to the
image and thresholding it) apart from the model's: its p50/p95/p99 in milliseconds.

Revision ID: 0006
Revises: 0005
Create Date: 2025-01-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ("mask_p50_ms", "mask_p95_ms", "mask_p99_ms")


def upgrade() -> None:
    # Nullable: detection models decode no masks, and earlier records did not time it.
    # ADD COLUMN is not an UPDATE: the append-only triggers of migration 0002 do not fire.
    for name in _COLUMNS:
        op.add_column("benchmark_records", sa.Column(name, sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("benchmark_records") as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
