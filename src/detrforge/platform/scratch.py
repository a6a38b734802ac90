"""What jobs leave on local disk, and its cleanup: job scratch folders and the download cache.

Scratch: a fine-tune or sweep driver works in ``job_scratch_dir(job_id)`` (under the system
temp dir, on the node it runs on) and removes it when it ends; a driver killed with SIGKILL
cannot, and leaves hundreds of MB. Only the job's final state says when a folder is garbage,
so the API's reconciler removes the folders of jobs its database knows are terminal. A driver
cannot do it for others at its start: with several jobs at once it cannot tell a live job's
folder from a dead one's. Folders of jobs the database does not know are kept (they may belong
to another detrforge instance sharing the temp dir). Scratch on other nodes of a multi-node
cluster is out of reach of the API process; only the driver's own cleanup applies there.

Cache: ``fetch_local`` keeps one entry per s3:// URI (``<hash>/manifest.json`` plus the
files), and every fetch rewrites the manifest, so its mtime is the entry's last use. Entries
unused for ``max_age_s`` are removed, then the least recently used until the cache fits
``max_bytes``; an entry used within ``MIN_KEEP_S`` is never removed (it may be being read).
An entry is emptied under the same lock ``fetch_local`` takes; the lock file itself stays, so a
fetch waiting on it finds an empty entry and downloads again.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MIN_KEEP_S",
    "Housekeeping",
    "job_scratch_dir",
    "prune_cache",
    "remove_finished_scratch",
    "scratch_root",
]

log = logging.getLogger(__name__)

# A cache entry used this recently is kept whatever the size cap: a job may be reading it.
MIN_KEEP_S = 3600.0
_MANIFEST = "manifest.json"
_LOCK = ".lock"


def scratch_root() -> Path:
    """Where job drivers keep their scratch folders on this node."""
    return Path(tempfile.gettempdir()) / "detrforge-jobs"


def job_scratch_dir(job_id: str, root: Path | None = None) -> Path:
    """The scratch folder of ``job_id`` (under ``root``, by default :func:`scratch_root`)."""
    return (root or scratch_root()) / job_id


def remove_finished_scratch(root: Path, is_terminal: Callable[[str], bool | None]) -> list[Path]:
    """Remove the scratch folders under ``root`` whose job is terminal; return what was removed.

    Args:
        root: the scratch root (:func:`scratch_root`).
        is_terminal: job id -> True (terminal), False (live) or None (unknown: kept).
    """
    removed = []
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return []
    for path in entries:
        if path.is_dir() and not path.is_symlink() and is_terminal(path.name) is True:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _entries(cache_dir: Path) -> list[Path]:
    """Cache entries under ``cache_dir`` (any depth): the outermost folders holding a lock.

    Outermost only: a cached dataset may itself contain a file named like ours.
    """
    found: list[Path] = []
    for lock in sorted(cache_dir.rglob(_LOCK), key=lambda p: len(p.parts)):
        entry = lock.parent
        if not any(entry.is_relative_to(outer) for outer in found):
            found.append(entry)
    return sorted(found)


def _loose_files(cache_dir: Path, entries: list[Path]) -> list[Path]:
    """Files under ``cache_dir`` outside every entry (e.g. a crashed registration's copy)."""
    return [
        p
        for p in cache_dir.rglob("*")
        if p.is_file()
        and not p.is_symlink()
        and not any(p.is_relative_to(entry) for entry in entries)
    ]


def _last_used(entry: Path) -> float:
    manifest = entry / _MANIFEST
    return (manifest if manifest.exists() else entry).stat().st_mtime


def _size(entry: Path) -> int:
    return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file() and not p.is_symlink())


def _empty(entry: Path) -> bool:
    """Remove everything in ``entry`` but its lock, if no fetch holds the lock; True if done."""
    lock = entry / _LOCK
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a fetch is filling it right now
        try:
            for child in entry.iterdir():
                if child.name == _LOCK:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return True


def prune_cache(
    cache_dir: Path, *, max_age_s: float, max_bytes: int, now: float | None = None
) -> list[Path]:
    """Empty cache entries unused for ``max_age_s``, then the oldest until ``max_bytes`` fits.

    Files outside any entry (a staging copy a crashed registration left) go once older than
    ``max_age_s``. Returns what was emptied or removed. Nothing used within
    :data:`MIN_KEEP_S` is touched.
    """
    now = time.time() if now is None else now
    pruned = []
    found = _entries(cache_dir)
    for loose in _loose_files(cache_dir, found):
        try:
            if now - loose.stat().st_mtime > max(max_age_s, MIN_KEEP_S):
                loose.unlink()
                pruned.append(loose)
        except FileNotFoundError:
            continue
    entries = []
    for entry in found:
        try:
            entries.append((_last_used(entry), _size(entry), entry))
        except FileNotFoundError:
            continue
    entries.sort()  # least recently used first
    total = sum(size for _, size, _ in entries)
    for used, size, entry in entries:
        age = now - used
        if size == 0 or age < MIN_KEEP_S:
            continue
        if (age > max_age_s or total > max_bytes) and _empty(entry):
            total -= size
            pruned.append(entry)
    return pruned


@dataclass
class Housekeeping:
    """Scratch and cache cleanup, run from the reconcile loop at most every ``interval_s``.

    The first :meth:`run` (the server's first reconcile pass) always cleans.
    """

    cache_dir: Path
    scratch_root: Path = field(default_factory=scratch_root)
    cache_max_age_s: float = 7 * 24 * 3600.0
    cache_max_bytes: int = 20 * 1024**3
    interval_s: float = 300.0
    _last_run: float | None = field(default=None, init=False, repr=False)

    def run(self, is_terminal: Callable[[str], bool | None], *, force: bool = False) -> bool:
        """Clean if due (or ``force``); returns whether it cleaned."""
        now = time.monotonic()
        if not force and self._last_run is not None and now - self._last_run < self.interval_s:
            return False
        self._last_run = now
        for path in remove_finished_scratch(self.scratch_root, is_terminal):
            log.info("removed the scratch folder of finished job %s", path.name)
        pruned = prune_cache(
            self.cache_dir, max_age_s=self.cache_max_age_s, max_bytes=self.cache_max_bytes
        )
        if pruned:
            log.info("pruned %d download cache entries under %s", len(pruned), self.cache_dir)
        return True
