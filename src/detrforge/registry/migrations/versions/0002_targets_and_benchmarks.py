"""Hardware targets and the append-only benchmark history.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written by hand and frozen: later model changes must not alter what this revision creates.
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_APPEND_ONLY = "benchmark_records is append-only"

# PostgreSQL: one statement-level trigger refuses UPDATE, DELETE and TRUNCATE, even of zero rows.
_PG_FUNCTION = f"""
CREATE FUNCTION benchmark_records_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{_APPEND_ONLY}: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$
"""
_PG_TRIGGER = """
CREATE TRIGGER benchmark_records_append_only
BEFORE UPDATE OR DELETE OR TRUNCATE ON benchmark_records
FOR EACH STATEMENT EXECUTE FUNCTION benchmark_records_append_only()
"""
# SQLite has row-level triggers only (a statement touching no row passes) and no TRUNCATE. Its
# DROP TABLE does not fire them, so the downgrade still works.
_SQLITE_TRIGGERS = {
    "benchmark_records_no_update": "UPDATE",
    "benchmark_records_no_delete": "DELETE",
}


def _timestamp(name: str, *, nullable: bool) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "hardware_targets",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("resources", _JSON, nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("precision", sa.String(8), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("num_threads", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(255), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_hardware_targets"),
    )

    op.create_table(
        "benchmark_records",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        _timestamp("created_at", nullable=False),
        sa.Column("model_name", sa.String(255), nullable=True),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("checkpoint_uri", sa.Text(), nullable=False),
        sa.Column("checkpoint_sha256", sa.String(64), nullable=False),
        sa.Column("model_size", sa.String(16), nullable=False),
        sa.Column("target", sa.String(63), nullable=False),
        sa.Column("target_resources", _JSON, nullable=False),
        sa.Column("node_id", sa.String(128), nullable=True),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("precision", sa.String(8), nullable=False),
        sa.Column("resolution", sa.Integer(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("warmup", sa.Integer(), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("threads", sa.Integer(), nullable=True),
        sa.Column("device", sa.String(255), nullable=True),
        sa.Column("p50_ms", sa.Double(), nullable=False),
        sa.Column("p95_ms", sa.Double(), nullable=False),
        sa.Column("p99_ms", sa.Double(), nullable=False),
        sa.Column("mean_ms", sa.Double(), nullable=False),
        sa.Column("std_ms", sa.Double(), nullable=False),
        sa.Column("min_ms", sa.Double(), nullable=False),
        sa.Column("max_ms", sa.Double(), nullable=False),
        sa.Column("e2e_p50_ms", sa.Double(), nullable=True),
        sa.Column("e2e_p95_ms", sa.Double(), nullable=True),
        sa.Column("e2e_p99_ms", sa.Double(), nullable=True),
        sa.Column("images_per_s", sa.Double(), nullable=False),
        sa.Column("environment", _JSON, nullable=False),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("dataset_fingerprint", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_benchmark_records"),
    )
    op.create_index(
        "ix_benchmark_records_target_created_at", "benchmark_records", ["target", "created_at"]
    )
    op.create_index(
        "ix_benchmark_records_checkpoint_sha256", "benchmark_records", ["checkpoint_sha256"]
    )
    op.create_index("ix_benchmark_records_job_id", "benchmark_records", ["job_id"], unique=True)

    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    elif dialect == "sqlite":
        for trigger, operation in _SQLITE_TRIGGERS.items():
            op.execute(
                f"CREATE TRIGGER {trigger} BEFORE {operation} ON benchmark_records "
                f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
            )


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS benchmark_records_append_only ON benchmark_records")
        op.execute("DROP FUNCTION IF EXISTS benchmark_records_append_only()")
    elif dialect == "sqlite":
        for trigger in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.drop_index("ix_benchmark_records_job_id", table_name="benchmark_records")
    op.drop_index("ix_benchmark_records_checkpoint_sha256", table_name="benchmark_records")
    op.drop_index("ix_benchmark_records_target_created_at", table_name="benchmark_records")
    op.drop_table("benchmark_records")
    op.drop_table("hardware_targets")
