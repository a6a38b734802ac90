"""What else used this node while a benchmark measured: load average and the busiest processes.

A latency figure means little without the load it was taken under. :class:`LoadWatch` reads the
node's load average and every process's CPU time when a measurement starts and when it ends;
the record then says how busy the node was and which other processes (Ray tasks show up as
``ray::<task>``) used CPU meanwhile.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

__all__ = ["LoadWatch"]

TOP_PROCESSES = 5


def _cpu_times(skip: set[int]) -> dict[int, tuple[str, float]]:
    out = {}
    for process in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
        info = process.info
        if info["pid"] in skip or info["cpu_times"] is None:
            continue
        cmdline = info["cmdline"] or []
        # Ray names its worker processes after the task they run (``ray::benchmark_task``); a
        # bare interpreter is named by what it runs (``python -m detrforge.jobs.evaluate``).
        name = info["name"]
        if cmdline and cmdline[0].startswith("ray::"):
            name = cmdline[0]
        elif cmdline and str(name).startswith("python"):
            name = " ".join(Path(cmdline[0]).name if i == 0 else part
                            for i, part in enumerate(cmdline[:3]))[:80]  # fmt: skip
        times = info["cpu_times"]
        out[info["pid"]] = (str(name), float(times.user + times.system))
    return out


@dataclass
class LoadWatch:
    """Call :meth:`start` before the timed runs and :meth:`stop` after them."""

    _started: float = 0.0
    _wall_started: float = 0.0
    _load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    _before: dict[int, tuple[str, float]] = field(default_factory=dict)
    _skip: set[int] = field(default_factory=set)

    def start(self) -> None:
        self._skip = {os.getpid()}
        self._load_start = os.getloadavg()
        self._before = _cpu_times(self._skip)
        self._started = time.monotonic()
        self._wall_started = time.time()

    def stop(self) -> dict[str, Any]:
        """The node's load during the measurement, as JSON-ready figures."""
        wall_s = max(time.monotonic() - self._started, 1e-9)
        after = _cpu_times(self._skip)
        used: list[tuple[float, int, str]] = []
        for pid, (name, cpu_s) in after.items():
            delta = cpu_s - self._before.get(pid, (name, 0.0))[1]
            if delta > 0.01 * wall_s:  # at least 1% of one CPU
                used.append((delta, pid, name))
        used.sort(reverse=True)
        cpus = psutil.cpu_count() or 1
        other_cpu_s = sum(delta for delta, _, _ in used)
        return {
            "started_at": self._wall_started,
            "finished_at": time.time(),
            "wall_s": round(wall_s, 3),
            "cpu_count": cpus,
            "loadavg_1m_start": round(self._load_start[0], 2),
            "loadavg_1m_end": round(os.getloadavg()[0], 2),
            # Share of the node's CPU time that other processes used while this one measured.
            "other_cpu_share": round(other_cpu_s / (wall_s * cpus), 4),
            "busiest_others": [
                {"pid": pid, "name": name, "cpu_s": round(delta, 3)}
                for delta, pid, name in used[:TOP_PROCESSES]
            ],
        }
