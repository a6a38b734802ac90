"""Built inference variants of model versions (onnx-int8, openvino-fp32, ...): one row per
content-addressed artifact, with its recipe and what was measured of it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "version_variants",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "version_id",
            sa.String(32),
            sa.ForeignKey("model_versions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("runtime", sa.String(32), nullable=False),
        sa.Column("precision", sa.String(8), nullable=False),
        sa.Column("artifact_uri", sa.Text(), nullable=False),
        sa.Column("model_file", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("build_seconds", sa.Double(), nullable=False),
        sa.Column("recipe", _JSON, nullable=False),
        sa.Column("metrics", _JSON, nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_version_variants_version_id", "version_variants", ["version_id"])
    op.create_index(
        "uq_version_variants_version_name_sha",
        "version_variants",
        ["version_id", "name", "sha256"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_version_variants_version_name_sha", table_name="version_variants")
    op.drop_index("ix_version_variants_version_id", table_name="version_variants")
    op.drop_table("version_variants")
