"""Model registry: registered models, versions, gate policies, promotions, gate results, audit.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written by hand and frozen: later model changes must not alter what this revision creates.
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_APPEND_ONLY = "audit_events is append-only"

_PG_FUNCTION = f"""
CREATE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{_APPEND_ONLY}: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$
"""
_PG_TRIGGER = """
CREATE TRIGGER audit_events_append_only
BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()
"""
_SQLITE_TRIGGERS = {"audit_events_no_update": "UPDATE", "audit_events_no_delete": "DELETE"}


def _timestamp(name: str, *, nullable: bool) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _partial_unique(name: str, table: str, column: str, where: str) -> None:
    op.create_index(
        name,
        table,
        [column],
        unique=True,
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
    )


def upgrade() -> None:
    op.create_table(
        "registered_models",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("updated_at", nullable=False),
        sa.Column("lock_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_registered_models"),
        sa.UniqueConstraint("name", name="uq_registered_models_name"),
    )
    op.create_table(
        "gate_policies",
        sa.Column("model_id", sa.String(32), nullable=False),
        sa.Column("policy", _JSON, nullable=False),
        sa.Column("updated_by", sa.String(255), nullable=False),
        _timestamp("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("model_id", name="pk_gate_policies"),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["registered_models.id"],
            name="fk_gate_policies_model_id_registered_models",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("model_id", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("checkpoint_uri", sa.Text(), nullable=False),
        sa.Column("checkpoint_sha256", sa.String(64), nullable=False),
        sa.Column("checkpoint_bytes", sa.BigInteger(), nullable=False),
        sa.Column("model_size", sa.String(16), nullable=False),
        sa.Column("resolution", sa.Integer(), nullable=False),
        sa.Column("class_names", _JSON, nullable=False),
        sa.Column("dataset_fingerprint", sa.String(128), nullable=True),
        sa.Column("params", _JSON, nullable=False),
        sa.Column("source_job_id", sa.String(32), nullable=True),
        sa.Column("source_trial_id", sa.String(128), nullable=True),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("mlflow_version", sa.String(32), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("stage_changed_at", nullable=False),
        sa.Column("replaced_version", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_model_versions"),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["registered_models.id"],
            name="fk_model_versions_model_id_registered_models",
        ),
        sa.CheckConstraint(
            "stage IN ('none', 'staging', 'production', 'archived')",
            name="ck_model_versions_stage",
        ),
    )
    op.create_index(
        "uq_model_versions_model_id_version", "model_versions", ["model_id", "version"], unique=True
    )
    _partial_unique(
        "uq_model_versions_one_production", "model_versions", "model_id", "stage = 'production'"
    )
    _partial_unique(
        "uq_model_versions_one_staging", "model_versions", "model_id", "stage = 'staging'"
    )

    op.create_table(
        "promotions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("model_id", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("from_stage", sa.String(16), nullable=False),
        sa.Column("to_stage", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("baseline_version", sa.Integer(), nullable=True),
        sa.Column("evidence", _JSON, nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        _timestamp("created_at", nullable=False),
        _timestamp("updated_at", nullable=False),
        _timestamp("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_promotions"),
        sa.ForeignKeyConstraint(
            ["model_id"], ["registered_models.id"], name="fk_promotions_model_id_registered_models"
        ),
    )
    _partial_unique(
        "uq_promotions_one_active", "promotions", "model_id", "state IN ('pending', 'running')"
    )
    op.create_index("ix_promotions_model_id_created_at", "promotions", ["model_id", "created_at"])

    op.create_table(
        "gate_results",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("promotion_id", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("gate", sa.String(64), nullable=False),
        sa.Column("target", sa.String(63), nullable=True),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("candidate", sa.Double(), nullable=True),
        sa.Column("baseline", sa.Double(), nullable=True),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("evidence", _JSON, nullable=False),
        _timestamp("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_gate_results"),
        sa.ForeignKeyConstraint(
            ["promotion_id"], ["promotions.id"], name="fk_gate_results_promotion_id_promotions"
        ),
    )
    op.create_index("ix_gate_results_promotion_id", "gate_results", ["promotion_id"])

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _timestamp("at", nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(255), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("details", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_model_name_id", "audit_events", ["model_name", "id"])
    op.create_index("ix_audit_events_request_id", "audit_events", ["request_id"])

    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    elif dialect == "sqlite":
        for trigger, operation in _SQLITE_TRIGGERS.items():
            op.execute(
                f"CREATE TRIGGER {trigger} BEFORE {operation} ON audit_events "
                f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
            )


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
    elif dialect == "sqlite":
        for trigger in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.drop_table("audit_events")
    op.drop_table("gate_results")
    op.drop_table("promotions")
    op.drop_table("model_versions")
    op.drop_table("gate_policies")
    op.drop_table("registered_models")
