"""Failpoints for crash tests: ``DETRFORGE_FAILPOINTS`` names points where the process dies, or
stops, as a crash at that very point would leave things. Never set in production."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Literal

__all__ = ["FAILPOINTS", "FAILPOINT_EXIT_CODE", "failpoint"]

log = logging.getLogger(__name__)

FAILPOINT_EXIT_CODE = 86

# What each point does: "exit" ends the process at once (no cleanup, as SIGKILL would); "hang"
# stops the thread there for good while the rest of the process lives on (its promotion leases
# are still renewed), so a test can kill it in that window.
FAILPOINTS: Mapping[str, Literal["exit", "hang"]] = {
    # A promotion's gates are recorded, the stage change is not committed yet.
    "promotion.before_commit": "exit",
    # A promotion's evidence jobs are submitted, their submission is not recorded yet.
    "promotion.after_submit": "hang",
}


def failpoint(name: str, enabled: frozenset[str]) -> Callable[[], None] | None:
    """What to call at the point ``name``, or None when it is not ``enabled``."""
    if name not in enabled:
        return None
    action = FAILPOINTS[name]

    def trip() -> None:
        if action == "hang":
            log.error("failpoint %s: this thread stops here until the process is killed", name)
            threading.Event().wait()
        log.error("failpoint %s: exiting the process now", name)
        logging.shutdown()
        os._exit(FAILPOINT_EXIT_CODE)

    return trip
