"""Which API replica advances which promotion: leases taken, renewed and given up.

Every replica runs the promotion worker, so each promotion is advanced only by the replica that
holds its lease in the database (``registry.leases``). A replica keeps the leases it takes: each
pass of its worker renews them, and so does a renewer thread every ``renew_interval_s`` while a
long step (a job submission, re-hashing a checkpoint) runs. A replica that dies stops renewing;
once ``ttl_s`` has passed another replica takes the lease and resumes the promotion from the
database. A replica that shuts down cleanly releases its leases at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass, field

from detrforge.registry.leases import LeaseStore

__all__ = ["PromotionLeases", "replica_id"]

log = logging.getLogger(__name__)


def replica_id() -> str:
    """A name for this API process, unique among replicas: ``host:pid:random``.

    The random part keeps a restarted process that got the same pid (a container's pid 1) from
    inheriting the leases of the one that died.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass
class PromotionLeases:
    """The promotion leases one API replica (``owner``) holds; ``ttl_s`` and
    ``renew_interval_s`` come from the settings (``DETRFORGE_PROMOTION_LEASE_*``)."""

    store: LeaseStore
    ttl_s: float
    renew_interval_s: float
    owner: str = field(default_factory=replica_id)
    _held: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self, promotion_id: str) -> bool:
        """Take or renew the promotion's lease; True while this replica holds it."""
        lease = self.store.acquire(promotion_id, self.owner, ttl_s=self.ttl_s)
        with self._lock:
            if lease is not None and promotion_id not in self._held:
                log.info("replica %s now advances promotion %s", self.owner, promotion_id)
            if lease is not None:
                self._held.add(promotion_id)
            else:
                self._held.discard(promotion_id)
        return lease is not None

    def held(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._held)

    def renew(self) -> None:
        """Renew every lease held; a lease that could not be renewed (the promotion ended, or
        another replica took it after this one stalled) is dropped."""
        for promotion_id in self.held():
            if not self.claim(promotion_id):
                log.info("replica %s no longer holds promotion %s", self.owner, promotion_id)

    def keep_renewed(self, stop: threading.Event) -> None:
        """Renew every ``renew_interval_s`` until ``stop`` is set (the renewer thread)."""
        while not stop.wait(self.renew_interval_s):
            try:
                self.renew()
            except Exception:  # noqa: BLE001 - a flaky database must not end the renewer
                log.exception("renewing promotion leases failed")

    def take_over(self, previous_owner: str) -> list[str]:
        """Take the leases of ``previous_owner`` at once, without waiting for them to expire:
        only for a predecessor known to be dead (``serve`` restarted on the same home, whose
        lock it held). Returns the promotion ids."""
        taken = self.store.transfer(previous_owner, self.owner)
        with self._lock:
            self._held.update(taken)
        return taken

    def release_all(self) -> None:
        """Give up every lease at once, so another replica resumes without waiting for expiry."""
        for promotion_id in self.held():
            self.store.release(promotion_id, self.owner)
        with self._lock:
            self._held.clear()
