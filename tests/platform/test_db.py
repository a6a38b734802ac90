from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, insert, inspect, select, text

from detrforge.platform.db import (
    MIGRATIONS_DIR,
    Base,
    UtcDateTime,
    make_engine,
    make_session_factory,
    normalize_url,
    upgrade_database,
)
from detrforge.registry import dbmodels  # noqa: F401  (registers the tables on Base.metadata)


def test_postgresql_urls_use_psycopg3() -> None:
    engine = make_engine("postgresql://user:p%40ss@db.example:5432/registry")
    try:
        assert engine.url.drivername == "postgresql+psycopg"
        assert engine.url.password == "p@ss"
        assert engine.url.database == "registry"
    finally:
        engine.dispose()
    assert normalize_url("postgresql+psycopg://h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"


def test_sqlite_connections_are_configured(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 10_000
    finally:
        engine.dispose()


def test_migrations_ship_inside_the_package() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0001_jobs_and_api_keys.py").is_file()


def test_upgrade_creates_schema_and_is_idempotent(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No alembic.ini anywhere near the working directory.
    monkeypatch.chdir(tmp_path)
    upgrade_database(database_url)
    upgrade_database(database_url)

    engine = make_engine(database_url)
    try:
        inspector = inspect(engine)
        assert {"jobs", "api_keys", "alembic_version"} <= set(inspector.get_table_names())
        job_columns = {column["name"] for column in inspector.get_columns("jobs")}
        assert job_columns == {
            "id", "kind", "state", "spec", "created_by", "dataset_fingerprint",
            "ray_submission_id", "mlflow_run_id", "error", "progress", "metrics",
            "checkpoint_uri", "checkpoint_sha256", "model_uri", "created_at", "started_at",
            "finished_at", "updated_at",
        }  # fmt: skip
        key_indexes = {index["name"]: index for index in inspector.get_indexes("api_keys")}
        assert bool(key_indexes["ix_api_keys_key_hash"]["unique"]) is True
        job_indexes = {index["name"] for index in inspector.get_indexes("jobs")}
        assert {"ix_jobs_state", "ix_jobs_created_at"} <= job_indexes
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        assert [row[0] for row in versions] == [_head_revision()]
    finally:
        engine.dispose()


def test_replicas_starting_together_migrate_one_after_another(database_url: str) -> None:
    # Separate processes, as replicas are (Alembic's migration context is process-global).
    code = "import sys; from detrforge.platform.db import upgrade_database as u; u(sys.argv[1])"
    starts = [
        subprocess.Popen([sys.executable, "-c", code, database_url], stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    errors = [start.communicate(timeout=120)[1].decode()[-2000:] for start in starts]
    assert [start.returncode for start in starts] == [0, 0], errors
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        assert [row[0] for row in versions] == [_head_revision()]
    finally:
        engine.dispose()


def test_utc_datetime_round_trips_as_aware_utc(database_url: str) -> None:
    metadata = MetaData()
    table = Table(
        "stamps", metadata, Column("id", Integer, primary_key=True), Column("at", UtcDateTime)
    )
    engine = make_engine(database_url)
    try:
        metadata.create_all(engine)
        plus_two = timezone(timedelta(hours=2))
        with engine.begin() as connection:
            connection.execute(
                insert(table).values(id=1, at=datetime(2024, 5, 1, 14, 30, 15, 123456, plus_two))
            )
        factory = make_session_factory(engine)
        with factory() as session:
            stored = session.scalars(select(table.c.at)).one()
        assert stored == datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
        assert stored.utcoffset() == timedelta(0)

        with pytest.raises(Exception, match="naive datetime"), engine.begin() as connection:
            connection.execute(insert(table).values(id=2, at=datetime(2024, 5, 1)))
    finally:
        engine.dispose()


def test_migrations_match_the_orm_models(database_url: str) -> None:
    upgrade_database(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    from detrforge.platform.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def test_new_sqlite_database_and_home_are_private(tmp_path: Path) -> None:
    import os
    import stat

    from detrforge.platform.settings import Settings

    old = os.umask(0o022)
    try:
        home = Settings(home=tmp_path / "a" / "home").resolved_home()
        url = f"sqlite:///{home / 'registry.db'}"
        upgrade_database(url)
        engine = make_engine(url)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    finally:
        os.umask(old)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "registry.db").stat().st_mode) == 0o600
    for sidecar in ("registry.db-wal", "registry.db-shm"):
        if (home / sidecar).exists():
            assert stat.S_IMODE((home / sidecar).stat().st_mode) & 0o077 == 0, sidecar


def test_an_existing_database_file_keeps_its_mode(tmp_path: Path) -> None:
    import stat

    path = tmp_path / "shared.db"
    path.touch()
    path.chmod(0o640)
    make_engine(f"sqlite:///{path}").dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_the_embedded_mlflow_store_is_private(tmp_path: Path) -> None:
    import os
    import stat

    from detrforge.platform.tracking import Tracker

    old = os.umask(0o022)
    try:
        tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
        tracker.experiment_id()  # MLflow creates its tables in the file
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "mlflow.db").stat().st_mode) == 0o600
