"""Promotion leases on SQLite and PostgreSQL: one owner at a time, expiry hands over, only the
owner renews, releases or writes, and a finished promotion is nobody's."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from detrforge.platform.errors import LeaseLostError
from detrforge.registry.entities import PromotionState
from detrforge.registry.leases import LeaseStore
from fixtures_db import RegistryStores

ACTOR = "key:test"
A, B = "host-a:101:aaaa", "host-b:202:bbbb"


@pytest.fixture
def leases(registry_stores: RegistryStores) -> LeaseStore:
    return registry_stores.leases


@pytest.fixture
def promotion_id(registry_stores: RegistryStores, tmp_path: Path) -> str:
    """A pending promotion of a model's v1 (no policy)."""
    checkpoint = tmp_path / "v1.pth"
    checkpoint.write_bytes(b"weights")
    registry_stores.models.create_model("leased", actor=ACTOR)
    registry_stores.models.register_version(
        "leased",
        checkpoint_uri=str(checkpoint),
        checkpoint_sha256="0" * 64,
        checkpoint_bytes=7,
        model_size="nano",
        resolution=128,
        actor=ACTOR,
    )
    return registry_stores.promotions.request("leased", 1, "production", actor=ACTOR).id


def test_of_two_owners_one_holds_it(leases: LeaseStore, promotion_id: str) -> None:
    held = leases.acquire(promotion_id, A, ttl_s=30)
    assert held is not None and held.owner == A

    assert leases.acquire(promotion_id, B, ttl_s=30) is None
    holder = leases.holder(promotion_id)
    assert holder is not None and holder.owner == A


def test_owners_racing_for_it_leave_exactly_one_holder(
    leases: LeaseStore, promotion_id: str
) -> None:
    owners = [f"host-{i}:{i}:race" for i in range(6)]
    for _ in range(4):
        start = threading.Barrier(len(owners))
        won: list[str] = []
        threads = [
            threading.Thread(target=_contend, args=(leases, promotion_id, owner, start, won))
            for owner in owners
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1, won
        holder = leases.holder(promotion_id)
        assert holder is not None and holder.owner == won[0]
        assert leases.release(promotion_id, won[0]) is True


def _contend(
    leases: LeaseStore, promotion_id: str, owner: str, start: threading.Barrier, won: list[str]
) -> None:
    start.wait()
    if leases.acquire(promotion_id, owner, ttl_s=30) is not None:
        won.append(owner)


def test_expiry_lets_another_owner_take_it(
    leases: LeaseStore, registry_stores: RegistryStores, promotion_id: str
) -> None:
    assert leases.acquire(promotion_id, A, ttl_s=0.5) is not None
    assert leases.acquire(promotion_id, B, ttl_s=30) is None
    time.sleep(0.7)
    assert leases.holder(promotion_id) is None  # expired, nobody holds it

    taken = leases.acquire(promotion_id, B, ttl_s=30)
    assert taken is not None and taken.owner == B
    # The replica that stalled past its lease can neither renew it nor write progress.
    assert leases.acquire(promotion_id, A, ttl_s=30) is None
    with pytest.raises(LeaseLostError, match=f"leased to API replica {B}; replica {A} no longer"):
        registry_stores.promotions.update(promotion_id, evidence=[{"stale": True}], owner=A)
    written = registry_stores.promotions.update(promotion_id, evidence=[], owner=B)
    assert written.evidence == []


def test_only_the_owner_renews_or_releases_it(leases: LeaseStore, promotion_id: str) -> None:
    first = leases.acquire(promotion_id, A, ttl_s=10)
    assert first is not None
    time.sleep(0.05)
    renewed = leases.acquire(promotion_id, A, ttl_s=10)
    assert renewed is not None and renewed.expires_at > first.expires_at

    assert leases.acquire(promotion_id, B, ttl_s=10) is None  # B cannot renew A's lease
    assert leases.release(promotion_id, B) is False
    holder = leases.holder(promotion_id)
    assert holder is not None and (holder.owner, holder.expires_at) == (A, renewed.expires_at)

    assert leases.release(promotion_id, A) is True
    assert leases.holder(promotion_id) is None
    assert leases.acquire(promotion_id, B, ttl_s=10) is not None


def test_a_finished_promotion_is_finished_by_its_holder_and_leased_by_nobody(
    leases: LeaseStore, registry_stores: RegistryStores, promotion_id: str
) -> None:
    assert leases.acquire(promotion_id, A, ttl_s=30) is not None
    finish = registry_stores.promotions.finish
    with pytest.raises(LeaseLostError):
        finish(promotion_id, gate_results=[], passed=True, message="by B", owner=B)
    assert registry_stores.promotions.get(promotion_id).state == PromotionState.pending

    done = finish(promotion_id, gate_results=[], passed=True, message="by A", owner=A)
    again = finish(promotion_id, gate_results=[], passed=True, message="by B", owner=B)

    assert done.state == again.state == PromotionState.applied
    assert again.message == "by A"  # applied once: the second finish changed nothing
    assert leases.holder(promotion_id) is None
    assert leases.acquire(promotion_id, B, ttl_s=30) is None
    applies, _ = registry_stores.audit.list(model_name="leased", action="promotion.apply")
    assert len(applies) == 1


def test_a_dead_replicas_leases_pass_to_its_successor_at_once(
    leases: LeaseStore, promotion_id: str
) -> None:
    successor = "host-a:303:cccc"  # serve restarted on A's home: A is known to be gone
    assert leases.acquire(promotion_id, A, ttl_s=30) is not None

    assert leases.transfer(A, successor) == [promotion_id]
    holder = leases.holder(promotion_id)
    assert holder is not None and holder.owner == successor
    assert leases.transfer(A, B) == []
    assert leases.acquire(promotion_id, successor, ttl_s=30) is not None
