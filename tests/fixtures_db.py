"""Database fixtures: every test that takes them runs on SQLite, and also on PostgreSQL when
``DETRFORGE_TEST_DATABASE_URL`` names a server (each test gets its own fresh database there).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from detrforge.platform.db import (
    make_engine,
    make_session_factory,
    normalize_url,
    upgrade_database,
)
from detrforge.registry.audit import AuditLog
from detrforge.registry.benchmarks import BenchmarkStore
from detrforge.registry.jobs import JobStore
from detrforge.registry.keys import KeyStore
from detrforge.registry.leases import LeaseStore
from detrforge.registry.models import ModelStore
from detrforge.registry.promotions import PromotionStore
from detrforge.registry.targets import TargetStore

POSTGRES_URL_VARIABLE = "DETRFORGE_TEST_DATABASE_URL"

# Without a server the PostgreSQL variants are reported as skipped (never silently absent); in CI
# (CI=true) a missing server stops the run before any test (``pytest_configure`` below).
_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgresql",
        id="postgresql",
        marks=[pytest.mark.postgres]
        if os.environ.get(POSTGRES_URL_VARIABLE)
        else [
            pytest.mark.postgres,
            pytest.mark.skip(reason=f"PostgreSQL variant: set {POSTGRES_URL_VARIABLE} to run it"),
        ],
    ),
]


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI") == "true" and not os.environ.get(POSTGRES_URL_VARIABLE):
        raise pytest.UsageError(
            f"CI=true but {POSTGRES_URL_VARIABLE} is not set: CI runs every database test on "
            "PostgreSQL too (see .ci/run)"
        )


@pytest.fixture(params=_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database, on SQLite and (when configured) on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    yield from _fresh_postgres_database(os.environ[POSTGRES_URL_VARIABLE])


def _fresh_postgres_database(server_url: str) -> Iterator[str]:
    name = f"detrforge_test_{uuid.uuid4().hex[:16]}"
    engine = make_engine(server_url)
    maintenance = engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        with maintenance.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield normalize_url(server_url).set(database=name).render_as_string(hide_password=False)
        with maintenance.connect() as connection:
            # FORCE: an engine a test forgot to dispose must not keep the database alive.
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@pytest.fixture
def db_engine(database_url: str) -> Iterator[Engine]:
    """An engine on ``database_url``, with the schema migrated to head."""
    upgrade_database(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(db_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(db_engine)


@pytest.fixture
def job_store(session_factory: sessionmaker[Session]) -> JobStore:
    return JobStore(session_factory)


@pytest.fixture
def key_store(session_factory: sessionmaker[Session]) -> KeyStore:
    return KeyStore(session_factory)


@pytest.fixture
def target_store(session_factory: sessionmaker[Session]) -> TargetStore:
    return TargetStore(session_factory)


@pytest.fixture
def benchmark_store(session_factory: sessionmaker[Session]) -> BenchmarkStore:
    return BenchmarkStore(session_factory)


@dataclass(frozen=True)
class RegistryStores:
    """The registry stores over one database, as the control layer holds them."""

    models: ModelStore
    promotions: PromotionStore
    audit: AuditLog
    leases: LeaseStore


@pytest.fixture
def registry_stores(session_factory: sessionmaker[Session]) -> RegistryStores:
    return RegistryStores(
        models=ModelStore(session_factory),
        promotions=PromotionStore(session_factory),
        audit=AuditLog(session_factory),
        leases=LeaseStore(session_factory),
    )
