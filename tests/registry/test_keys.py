from __future__ import annotations

import hashlib
import os
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session, sessionmaker

from detrforge.platform.db import utcnow
from detrforge.platform.errors import InvalidSpecError, NotFoundError
from detrforge.registry.dbmodels import SqlApiKey
from detrforge.registry.entities import Role
from detrforge.registry.keys import KeyStore


def test_roles_compare_by_rank() -> None:
    assert [role.rank for role in Role] == [0, 1, 2, 3]
    assert Role.operator >= Role.viewer
    assert Role.admin > Role.approver > Role.operator > Role.viewer
    assert Role.viewer < Role.admin  # alphabetically it would be the other way round
    assert Role.viewer <= Role.viewer
    assert not Role.viewer >= Role.operator
    assert sorted([Role.admin, Role.viewer, Role.approver, Role.operator]) == list(Role)
    assert max(Role) is Role.admin
    assert Role.admin >= "operator"
    assert Role.approver.allows(Role.operator)
    assert Role.approver.allows(Role.approver)
    assert not Role.operator.allows(Role.approver)
    assert Role.admin.allows(Role.viewer)
    assert Role("admin") is Role.admin
    assert f"{Role.operator}" == "operator"
    with pytest.raises(ValueError):
        _ = Role.admin > "root"


def test_create_returns_the_plaintext_once(key_store: KeyStore) -> None:
    key, plaintext = key_store.create(name="ci", role=Role.operator)

    assert re.fullmatch(r"dfk_[A-Za-z0-9_-]{43}", plaintext)
    assert key.name == "ci"
    assert key.role is Role.operator
    assert key.prefix == plaintext[4:12]
    assert key.principal == "key:ci"
    assert key.is_active and key.revoked_at is None and key.last_used_at is None
    assert key.created_at.tzinfo is not None
    assert key_store.list() == [key]

    _, other = key_store.create(name="ci-2", role=Role.viewer)
    assert other != plaintext


def test_plaintext_is_never_stored(
    key_store: KeyStore, session_factory: sessionmaker[Session]
) -> None:
    key, plaintext = key_store.create(name="ci", role=Role.admin)
    secret_part = plaintext[len("dfk_") :]

    with session_factory() as session:
        rows = session.execute(text("SELECT * FROM api_keys")).mappings().all()
    assert len(rows) == 1
    row = dict(rows[0])
    assert row["key_hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert row["prefix"] == secret_part[:8]
    for column, value in row.items():
        assert secret_part not in str(value), column
        assert secret_part[8:16] not in str(value), column


def test_authenticate(key_store: KeyStore) -> None:
    key, plaintext = key_store.create(name="alice", role=Role.approver)

    found = key_store.authenticate(plaintext)
    assert found is not None
    assert (found.id, found.name, found.role, found.principal) == (
        key.id,
        "alice",
        Role.approver,
        "key:alice",
    )
    assert found.last_used_at is not None

    assert key_store.authenticate(plaintext[:-1]) is None
    assert key_store.authenticate(plaintext + "x") is None
    assert key_store.authenticate(plaintext[4:]) is None
    assert key_store.authenticate("") is None
    assert key_store.authenticate("dfk_" + "A" * 43) is None


def test_last_used_is_written_at_most_once_a_minute(
    key_store: KeyStore, session_factory: sessionmaker[Session]
) -> None:
    key, plaintext = key_store.create(name="alice", role=Role.viewer)
    first = key_store.authenticate(plaintext)
    assert first is not None and first.last_used_at is not None
    again = key_store.authenticate(plaintext)
    assert again is not None
    assert again.last_used_at == first.last_used_at

    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    with session_factory.begin() as session:
        session.execute(
            update(SqlApiKey).where(SqlApiKey.id == key.id).values(last_used_at=long_ago)
        )
    refreshed = key_store.authenticate(plaintext)
    assert refreshed is not None and refreshed.last_used_at is not None
    assert refreshed.last_used_at > long_ago + timedelta(minutes=4)


def test_revoke(key_store: KeyStore) -> None:
    key, plaintext = key_store.create(name="temp", role=Role.operator)
    _, kept = key_store.create(name="kept", role=Role.operator)

    revoked = key_store.revoke(key.id)
    assert revoked.id == key.id
    assert revoked.revoked_at is not None and not revoked.is_active
    assert key_store.authenticate(plaintext) is None
    assert key_store.authenticate(kept) is not None

    assert key_store.revoke(key.id).revoked_at == revoked.revoked_at
    assert [k.revoked_at is None for k in key_store.list()] == [False, True]

    with pytest.raises(NotFoundError, match="api key key-missing not found"):
        key_store.revoke("key-missing")


def test_create_validates_name_and_role(key_store: KeyStore) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        key_store.create(name="  ", role=Role.viewer)
    assert caught.value.field == "name"
    with pytest.raises(InvalidSpecError, match="unknown role 'root'") as caught:
        key_store.create(name="x", role="root")  # type: ignore[arg-type]
    assert caught.value.field == "role"
    assert key_store.list() == []


def test_ensure_admin_key_writes_a_private_file_once(key_store: KeyStore, tmp_path: Path) -> None:
    path = tmp_path / "home" / "admin.key"

    plaintext = key_store.ensure_admin_key(path)
    assert plaintext is not None and plaintext.startswith("dfk_")
    assert path.read_text() == plaintext
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    admin = key_store.authenticate(plaintext)
    assert admin is not None
    assert (admin.name, admin.role, admin.principal) == (
        "bootstrap-admin",
        Role.admin,
        "key:bootstrap-admin",
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["admin.key"]

    # A second start does not rotate the key.
    assert key_store.ensure_admin_key(path) is None
    assert path.read_text() == plaintext
    assert len(key_store.list()) == 1
    assert key_store.authenticate(plaintext) is not None


def test_ensure_admin_key_respects_an_existing_admin(key_store: KeyStore, tmp_path: Path) -> None:
    key_store.create(name="ops", role=Role.admin)
    path = tmp_path / "admin.key"
    assert key_store.ensure_admin_key(path) is None
    assert not path.exists()


def test_ensure_admin_key_replaces_a_stale_file_after_revocation(
    key_store: KeyStore, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    key_store.create(name="ops", role=Role.operator)
    path = tmp_path / "admin.key"
    path.write_text("stale")
    path.chmod(0o644)
    first = key_store.ensure_admin_key(path)
    assert first is not None
    [admin] = [k for k in key_store.list() if k.role is Role.admin]
    # The API refuses to revoke the last admin key; someone with the database can still do it.
    with session_factory.begin() as session:
        session.execute(
            update(SqlApiKey).where(SqlApiKey.id == admin.id).values(revoked_at=utcnow())
        )

    second = key_store.ensure_admin_key(path)
    assert second is not None and second != first
    assert path.read_text() == second
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert key_store.authenticate(first) is None
    assert key_store.authenticate(second) is not None


@pytest.mark.parametrize("name", ["ops\x1b[31m", "a\x00b", "x\ny", "c1\x9b"])
def test_key_names_refuse_control_characters(key_store: KeyStore, name: str) -> None:
    with pytest.raises(InvalidSpecError, match="must not contain control characters") as caught:
        key_store.create(name=name, role=Role.viewer)
    assert caught.value.field == "name"


def test_the_last_active_admin_key_cannot_be_revoked(key_store: KeyStore) -> None:
    from detrforge.platform.errors import ConflictError

    first, _ = key_store.create(name="admin-1", role=Role.admin)
    viewer, _ = key_store.create(name="viewer", role=Role.viewer)
    with pytest.raises(ConflictError, match="last active admin key") as caught:
        key_store.revoke(first.id)
    assert caught.value.field == "key_id"
    assert key_store.get(first.id).revoked_at is None  # nothing was written
    assert key_store.revoke(viewer.id).revoked_at is not None
    second, _ = key_store.create(name="admin-2", role=Role.admin)
    assert key_store.revoke(first.id).revoked_at is not None
    with pytest.raises(ConflictError):
        key_store.revoke(second.id)
    # Revoking an already revoked admin changes nothing and is not refused.
    assert key_store.revoke(first.id).revoked_at is not None
