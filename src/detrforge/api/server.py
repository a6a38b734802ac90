"""``detrforge serve`` in the foreground: one server per home, owning the Ray head it starts.

- A lock file in ``DETRFORGE_HOME`` refuses a second ``serve`` on the same home; so a ``serve``
  that starts there knows the last one is gone, and takes over its promotion leases at once.
- Without ``RAY_ADDRESS`` it starts a local Ray head and claims it is up only once the head's
  Jobs API answers and a node is alive.
- SIGTERM or Ctrl-C stops the API, then the head and every process the head started.
- If the head dies, serve says so with the tail of the head's log, keeps answering ``/ready``
  with 503 for ``head_exit_grace_s``, then exits non-zero instead of serving 503s forever.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

from detrforge.platform.cluster import LocalRayHead, log_tail
from detrforge.platform.errors import ConflictError
from detrforge.platform.settings import Settings

if TYPE_CHECKING:
    from detrforge.control.leases import PromotionLeases

__all__ = [
    "HEAD_FAILURE_S",
    "HeadWatch",
    "ServeLock",
    "head_pid_file",
    "holder_pid",
    "run_server",
    "succeed_previous_replica",
]

# A head whose process lives but whose Jobs API or node has failed every check this long is dead.
HEAD_FAILURE_S = 20.0


class ServeLock:
    """An exclusive ``flock`` on ``<home>/serve.lock``; the kernel drops it when we die."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ConflictError(
                f"another `detrforge serve` (pid {holder}) is running on {self.path.parent}; "
                f"stop it first (`detrforge stop`) or set DETRFORGE_HOME to another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def head_pid_file(home: Path) -> Path:
    """Where serve records the pid of the head it started (for `detrforge cluster down`)."""
    return home / "ray" / "head.pid"


def holder_pid(home: Path) -> int | None:
    """The pid of the ``serve`` holding ``home``'s lock, or None when no serve holds it."""
    path = home / "serve.lock"
    if not path.exists():
        return None
    with path.open("r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else None
    return None


class HeadWatch(threading.Thread):
    """Watches the head ``serve`` owns; on its death records why and stops the server."""

    def __init__(
        self,
        head: LocalRayHead,
        stop_server: Callable[[], None],
        *,
        grace_s: float,
        report: Callable[[str], None],
    ) -> None:
        super().__init__(name="ray-head-watch", daemon=True)
        self.head = head
        self.stop_server = stop_server
        self.report = report
        self.grace_s = grace_s
        self.failure: str | None = None
        self.done = threading.Event()

    def run(self) -> None:
        failing_since: float | None = None
        next_check = 0.0
        while not self.done.wait(1.0):
            problem = None if self.head.alive() else self.head.check()
            if problem is None and time.monotonic() >= next_check:
                next_check = time.monotonic() + 5.0
                problem = self.head.check()
                if problem is None:
                    failing_since = None
                else:
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since < HEAD_FAILURE_S:
                        problem = None
            if problem is None:
                continue
            self.failure = (
                f"Ray: the local head is down ({problem}); serve is stopping. "
                f"Last lines of {self.head.log_path}:\n{log_tail(self.head.log_path)}"
            )
            self.report(self.failure)
            self.done.wait(self.grace_s)
            self.stop_server()
            return


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def succeed_previous_replica(leases: PromotionLeases, home: Path) -> None:
    """Take over the promotion leases of the last ``serve`` on this home: it is gone (this one
    holds the home's lock), so its promotions resume now rather than when its leases expire."""
    path = home / "replica.id"
    previous = path.read_text().strip() if path.exists() else ""
    if previous:
        leases.take_over(previous)
    path.write_text(leases.owner)


def run_server(settings: Settings, *, echo: Callable[[str], None]) -> int:
    """Run the API in this process until SIGTERM/Ctrl-C or its head dies; returns the exit code.

    Raises:
        ConflictError: another ``serve`` holds this home.
        ClusterError: the local Ray head did not come up (the message carries its log's tail).
    """
    import uvicorn

    from detrforge.api.main import build_services, create_app

    lock = ServeLock(settings.resolved_home() / "serve.lock")
    lock.acquire()
    # uvicorn restores these after its own handling and re-raises the signal: SystemExit then
    # unwinds through ``finally`` below, which stops the head.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    head: LocalRayHead | None = None
    watch: HeadWatch | None = None
    pid_file = head_pid_file(settings.resolved_home())
    try:
        if not settings.ray_address:
            head = LocalRayHead(
                temp_dir=settings.resolved_ray_temp_dir(),
                gcs_port=settings.ray_gcs_port,
                dashboard_port=settings.ray_dashboard_port,
                num_cpus=settings.ray_num_cpus,
            )
            echo(
                f"Ray: starting a local head on 127.0.0.1:{head.gcs_port} "
                f"(temp dir {head.temp_dir}, ~15 s)..."
            )
            head.start()
            assert head.process is not None
            pid_file.parent.mkdir(parents=True, exist_ok=True)
            pid_file.write_text(str(head.process.pid))
            echo(
                f"Ray: head up and checked (pid {head.process.pid}, Jobs API "
                f"{head.dashboard_url}); stopping serve stops it"
            )
        services = build_services(settings)
        succeed_previous_replica(services.promotions.leases, settings.resolved_home())
        if services.keys.ensure_admin_key(settings.admin_key_path):
            echo(f"Created the admin API key in {settings.admin_key_path} (mode 0600)")
        app = create_app(settings, services=services)
        server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port))
        if head is not None:
            watch = HeadWatch(
                head,
                lambda: setattr(server, "should_exit", True),
                grace_s=settings.head_exit_grace_s,
                report=echo,
            )
            watch.start()
        echo(
            f"detrforge API on http://{settings.host}:{settings.port} (docs at /docs, "
            f"readiness at /ready); Ctrl-C or SIGTERM stops it"
        )
        server.run()
        if watch is not None and watch.failure:
            return 1
        return 0 if server.started else 1
    finally:
        if watch is not None:
            watch.done.set()
        if head is not None:
            head.stop()
            pid_file.unlink(missing_ok=True)
            echo("Ray: stopped the local head and every process it started")
        lock.release()
