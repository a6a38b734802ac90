"""A job's task that Ray's memory monitor keeps killing fails the job instead of looping.

Ray retries an OOM-killed task without end by default, so an evaluation too big for its node
would hold a promotion "running" forever. Every job's environment (``job_env``) bounds that; here
a real Ray node whose kill threshold is below what it already uses kills the task each time, and
a driver with the jobs' environment gets Ray's OutOfMemoryError.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from detrforge.api.main import job_env
from detrforge.platform.cluster import ray_client_env
from detrforge.platform.settings import Settings

pytestmark = [pytest.mark.ray]

_DRIVER = textwrap.dedent(
    """
    import time

    import ray

    ray.init(
        num_cpus=1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=TEMP_DIR,
        # Below what the node uses already: every task started is killed.
        _system_config={"memory_usage_threshold": 0.01, "memory_monitor_refresh_ms": 100},
    )

    @ray.remote
    def evaluate():
        time.sleep(60)

    try:
        ray.get(evaluate.remote(), timeout=90)
        print("RESULT returned")
    except ray.exceptions.OutOfMemoryError:
        print("RESULT OutOfMemoryError")
    except ray.exceptions.GetTimeoutError:
        print("RESULT still retrying")
    """
)


def test_an_oom_killed_task_fails_its_job_with_the_jobs_environment(tmp_path: Path) -> None:
    temp_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"dfoom-{os.getpid()}"
    script = _DRIVER.replace("TEMP_DIR", repr(str(temp_dir)))
    env = {**os.environ, **ray_client_env(), **job_env(Settings(home=tmp_path / "home"))}
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert results == ["RESULT OutOfMemoryError"], done.stdout[-2000:] + done.stderr[-3000:]
