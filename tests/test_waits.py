"""The test harness's own waits and port reservations fail fast and say why (issue #10)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from detrforge.platform.cluster import LocalRayHead
from fixtures_cluster import head_alive, job_wait, start_on_reserved_ports, wait_until


def test_a_wait_names_what_it_waited_for_and_the_last_value() -> None:
    values = iter(range(100))
    with pytest.raises(AssertionError, match=r"waited 0.3 s for the counter to reach 99; last"):
        wait_until(
            lambda: next(values),
            until=lambda v: v == 99,
            what="the counter to reach 99",
            timeout_s=0.3,
            every_s=0.05,
        )


def test_a_job_in_another_final_state_ends_the_wait_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"job ft-1 to succeed: it ended FAILED: boom"):
        job_wait(
            lambda: {"state": "FAILED", "error": "boom"},
            what="job ft-1 to succeed",
            want="SUCCEEDED",
            timeout_s=600,
        )
    assert time.monotonic() - started < 5
    # Without ``want``, any final state ends the wait and is returned.
    assert job_wait(lambda: {"state": "CANCELLED"}, what="x", timeout_s=1)["state"] == "CANCELLED"


def test_a_wait_on_a_dead_ray_head_fails_in_seconds(tmp_path: Path) -> None:
    head = LocalRayHead(temp_dir=tmp_path)
    head.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    head.process.wait()
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"the Ray head exited \(code 3\)"):
        wait_until(
            lambda: {"state": "RUNNING"},
            until=lambda job: job["state"] == "SUCCEEDED",
            alive=head_alive(head),
            what="job ft-2 to end",
            timeout_s=600,
        )
    assert time.monotonic() - started < 5


def test_ports_are_reserved_distinct_and_a_taken_one_is_retried_once() -> None:
    calls: list[list[int]] = []

    def start(ports: list[int]) -> Any:
        calls.append(ports)
        # Each reserved port is free to bind now (released just before the start) ...
        for port in ports:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))
        if len(calls) == 1:  # ... but another process may take one first
            raise RuntimeError(f"port {ports[0]} (the Ray head's GCS) is already in use")
        return ports

    ports = start_on_reserved_ports(3, start)
    assert len(calls) == 2 and ports == calls[1] and len(set(ports)) == 3

    def broken(ports: list[int]) -> Any:
        calls.append(ports)
        raise RuntimeError("some other failure")

    calls.clear()
    with pytest.raises(RuntimeError, match="some other failure"):
        start_on_reserved_ports(2, broken)
    assert len(calls) == 1, "only 'address in use' is retried"
