"""API keys: issue, authenticate, list, revoke, and the bootstrap admin key.

A key is shown once, when it is created. The database keeps only its sha256 and a short,
non-secret prefix for display, so a leaked database does not leak usable keys.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import cast

from sqlalchemy import Engine, bindparam, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from detrforge.platform.db import utcnow
from detrforge.platform.errors import ConflictError, InvalidSpecError, NotFoundError
from detrforge.platform.limits import MAX_NAME_LENGTH, check_name
from detrforge.registry.dbmodels import SqlApiKey
from detrforge.registry.entities import ApiKey, Role

__all__ = ["BOOTSTRAP_ADMIN_NAME", "KEY_PREFIX", "KeyStore", "hash_key"]

KEY_PREFIX = "dfk_"
BOOTSTRAP_ADMIN_NAME = "bootstrap-admin"
# Characters after KEY_PREFIX kept in clear so people can tell their keys apart.
_DISPLAY_PREFIX_LENGTH = 8
# last_used_at is a hint for people auditing keys, not a log: one write a minute is enough and
# keeps authentication from writing on every request.
_LAST_USED_RESOLUTION = timedelta(minutes=1)
# authenticate() runs on every request: a prebuilt Core statement on a plain connection costs a
# fraction of an ORM session query. Columns only, so the row reads like the ORM object.
_ACTIVE_ADMINS = (
    select(SqlApiKey.id)
    .where(SqlApiKey.role == Role.admin.value)
    .where(SqlApiKey.revoked_at.is_(None))
)
_BY_HASH = select(*SqlApiKey.__table__.c).where(SqlApiKey.key_hash == bindparam("key_hash"))


def hash_key(plaintext: str) -> str:
    """The stored form of a key: its sha256, hex.

    A fast unsalted hash is right here, unlike for passwords: keys carry 256 random bits, so
    there is nothing to brute-force or look up in a table, and a deterministic hash lets
    authentication find the key with one indexed lookup.
    """
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


class KeyStore:
    """CRUD over the ``api_keys`` table; every method runs in its own short transaction."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def create(self, *, name: str, role: Role) -> tuple[ApiKey, str]:
        """Issue a key; returns its record and the plaintext key, which is never shown again.

        Raises:
            InvalidSpecError: empty or over-long name, or an unknown role.
        """
        with self._sessions.begin() as session:
            return self._create(session, name=name, role=role)

    def _create(self, session: Session, *, name: str, role: Role) -> tuple[ApiKey, str]:
        name = name.strip()
        if not name or len(name) > MAX_NAME_LENGTH:
            raise InvalidSpecError(
                f"key name must be 1 to {MAX_NAME_LENGTH} characters", field="name"
            )
        try:
            check_name(name)
        except ValueError as exc:
            raise InvalidSpecError(f"key name: {exc}", field="name") from None
        try:
            role = Role(role)
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise InvalidSpecError(
                f"unknown role {role!r}: use one of {roles}", field="role"
            ) from None
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        row = SqlApiKey(
            id=f"key-{secrets.token_hex(6)}",
            name=name,
            role=role.value,
            key_hash=hash_key(plaintext),
            prefix=plaintext[len(KEY_PREFIX) : len(KEY_PREFIX) + _DISPLAY_PREFIX_LENGTH],
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return row.to_entity(), plaintext

    def authenticate(self, plaintext: str) -> ApiKey | None:
        """The active key whose plaintext this is, or None for unknown or revoked keys.

        One indexed read per request on a plain connection (no ORM session: this is the hot
        path of every API call); ``last_used_at`` is written at most once a minute per key.
        """
        if not plaintext.startswith(KEY_PREFIX):
            return None
        digest = hash_key(plaintext)
        now = utcnow()
        with self._engine().connect() as conn:
            row = conn.execute(_BY_HASH, {"key_hash": digest}).one_or_none()
            # The lookup is by a hash of 256 random bits, so its timing reveals nothing useful;
            # the constant-time comparison guards the final decision anyway.
            if row is None or not hmac.compare_digest(row.key_hash, digest):
                return None
            if row.revoked_at is not None:
                return None
            last_used = row.last_used_at
            if last_used is None or now - last_used >= _LAST_USED_RESOLUTION:
                # Conditional, so concurrent requests write at most once per minute.
                conn.execute(
                    update(SqlApiKey)
                    .where(SqlApiKey.id == row.id)
                    .where(
                        or_(
                            SqlApiKey.last_used_at.is_(None),
                            SqlApiKey.last_used_at <= now - _LAST_USED_RESOLUTION,
                        )
                    )
                    .values(last_used_at=now)
                )
                row = conn.execute(_BY_HASH, {"key_hash": digest}).one()
                conn.commit()
            # A row of the table's columns has the ORM object's attribute names and types.
            return SqlApiKey.to_entity(cast(SqlApiKey, row))

    def _engine(self) -> Engine:
        bind = self._sessions.kw.get("bind")
        if not isinstance(bind, Engine):
            raise TypeError("KeyStore needs a session factory bound to an Engine")
        return bind

    def get(self, key_id: str) -> ApiKey:
        """The key record with id ``key_id``.

        Raises:
            NotFoundError: no such key.
        """
        with self._sessions() as session:
            row = session.get(SqlApiKey, key_id)
            if row is None:
                raise NotFoundError(f"api key {key_id} not found")
            return row.to_entity()

    def list(self) -> builtins.list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        with self._sessions() as session:
            rows = session.scalars(
                select(SqlApiKey).order_by(SqlApiKey.created_at, SqlApiKey.id)
            ).all()
            return [row.to_entity() for row in rows]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key for good; revoking a revoked key changes nothing.

        Raises:
            NotFoundError: no such key.
            ConflictError: the key is the last active admin key (nobody could manage keys).
        """
        with self._sessions.begin() as session:
            row = session.get(SqlApiKey, key_id)
            if row is None:
                raise NotFoundError(f"api key {key_id} not found")
            if row.revoked_at is None:
                is_admin = row.role == Role.admin.value
                if is_admin:
                    # PostgreSQL: two revocations of the last two admins wait on each other here.
                    session.scalars(_ACTIVE_ADMINS.with_for_update()).all()
                row.revoked_at = utcnow()
                session.flush()
                # Counted after the write (SQLite holds its write lock from the flush on).
                if is_admin and not session.scalars(_ACTIVE_ADMINS.limit(1)).first():
                    raise ConflictError(
                        f"key {row.name!r} is the last active admin key; create another admin "
                        "key first, or nobody could manage keys",
                        field="key_id",
                    )
            return row.to_entity()

    def ensure_admin_key(self, path: Path) -> str | None:
        """Make sure an active admin key exists, creating ``bootstrap-admin`` if none does.

        The new key's plaintext goes to ``path`` (mode 0600, replaced atomically) and is returned.
        When an active admin key already exists nothing changes and None is returned: keys are
        never rotated here, and an existing key's plaintext cannot be recovered.
        """
        with self._sessions.begin() as session:
            existing = session.scalars(
                select(SqlApiKey.id)
                .where(SqlApiKey.role == Role.admin.value)
                .where(SqlApiKey.revoked_at.is_(None))
                .limit(1)
            ).first()
            if existing is not None:
                return None
            _, plaintext = self._create(session, name=BOOTSTRAP_ADMIN_NAME, role=Role.admin)
            # Written before the commit: if the file cannot be written, no key exists that
            # nobody can use.
            _write_secret(path, plaintext)
        return plaintext


def _write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, at no moment by anyone else."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # Created 0600 from the start (O_EXCL: never an existing, possibly wider-open file), then
    # renamed over the target, so a pre-existing file's permissions never apply.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
