"""Database engine, sessions, the declarative base and schema migrations.

SQLite (embedded default) and PostgreSQL (production) are both first-class: the same models and
the same hand-written Alembic migrations run on either. The migrations ship inside the package
(``detrforge/registry/migrations``), so ``upgrade_database`` needs no ``alembic.ini`` and works
from an installed wheel and from any working directory.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    URL,
    CursorResult,
    DateTime,
    Engine,
    MetaData,
    create_engine,
    event,
    func,
    make_url,
    select,
)
from sqlalchemy.engine import Dialect, Result
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

__all__ = [
    "MIGRATIONS_DIR",
    "Base",
    "UtcDateTime",
    "alembic_config",
    "database_now",
    "make_engine",
    "make_session_factory",
    "normalize_url",
    "private_sqlite_file",
    "updated_rows",
    "upgrade_database",
    "utcnow",
]

# A path, not an import: the platform layer must not depend on the registry package.
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "registry" / "migrations"

# How long a SQLite connection waits for another writer's lock before failing with "database is
# locked". The API's request threads and its reconciler write concurrently.
SQLITE_BUSY_TIMEOUT_MS = 10_000

# Named constraints keep migrations reproducible and let SQLite batch migrations (which rebuild
# tables) find constraints by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every ``Sql*`` ORM class."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def database_now(session: Session) -> datetime:
    """The database server's clock (aware UTC) on PostgreSQL; this host's clock on SQLite.

    Leases compare expiry times written by different API replicas: on PostgreSQL they all read
    the one server clock, so skew between replica hosts does not matter. A SQLite database is on
    one host, so every replica reads the same clock there anyway.
    """
    if session.get_bind().dialect.name == "postgresql":
        now = session.scalar(select(func.now()))
        assert isinstance(now, datetime)
        return now.astimezone(UTC)
    return utcnow()


def updated_rows(result: Result[Any]) -> int:
    """How many rows an UPDATE's WHERE matched: what a conditional write checks to know it won."""
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    SQLite has no time zone type and hands back naive datetimes; PostgreSQL's ``timestamptz``
    hands them back in the session's time zone. Both come out as aware UTC here. Naive values are
    refused on the way in, because their time zone is a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime")
        # SQLite stores the wall-clock digits and drops the offset, so convert first.
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL, pointing plain PostgreSQL URLs at the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _configure_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers proceed while one writer commits; the API reads while jobs are updated.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for a SQLite or PostgreSQL URL (``postgresql://`` uses psycopg 3).

    SQLite connections get WAL journaling, enforced foreign keys and a busy timeout, and may be
    shared across threads (the pool hands each connection to one thread at a time).
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        _create_private_file(parsed.database)
        engine = create_engine(parsed, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    # pre_ping drops connections a restarted or failed-over server has closed.
    return create_engine(parsed, pool_pre_ping=True)


def _create_private_file(database: str | None) -> None:
    """Create a new SQLite database file readable by its owner only (0600).

    SQLite would create it with the umask's mode (often world-readable); its journal and WAL
    files take the database file's mode, so they stay private too. An existing file is left as
    it is.
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # created by another process since the check: theirs to keep
        return
    os.close(fd)


def private_sqlite_file(url: str) -> None:
    """Create the file of a new SQLite database at ``url`` with mode 0600 (no-op otherwise)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        _create_private_file(parsed.database)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine``; loaded objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """An Alembic configuration for the packaged migrations, built in code (no ini file)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # The ini layer interpolates '%', which URL-encoded passwords contain.
    config.set_main_option(
        "sqlalchemy.url", normalize_url(url).render_as_string(False).replace("%", "%%")
    )
    config.attributes["url"] = url
    return config


def upgrade_database(url: str) -> None:
    """Create or upgrade the schema at ``url`` to the newest migration; a no-op when current.

    API replicas starting together on a new database take turns (``_migration_lock``): the
    first migrates, the others then find the schema current.
    """
    with _migration_lock(url):
        command.upgrade(alembic_config(url), "head")


# The pg_advisory_lock key of the migrations (any bigint no other lock of the database uses).
_MIGRATION_LOCK_KEY = int.from_bytes(b"detrforg", "big")


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """Hold, for the whole migration, a PostgreSQL advisory lock (on its own connection) or an
    exclusive ``flock`` on ``<database>.migrate.lock`` beside a SQLite file."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "postgresql":
        engine = create_engine(parsed, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(select(func.pg_advisory_lock(_MIGRATION_LOCK_KEY)))
                try:
                    yield
                finally:
                    connection.execute(select(func.pg_advisory_unlock(_MIGRATION_LOCK_KEY)))
        finally:
            engine.dispose()
        return
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    _create_private_file(database)
    lock = os.open(f"{database}.migrate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)  # closing drops the lock
