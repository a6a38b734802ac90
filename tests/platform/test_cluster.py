"""The embedded head's ``python``: jobs start as ``python -m detrforge.jobs.X`` resolved on the
node's PATH, and on the embedded head that must be this venv's interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from detrforge.platform.cluster import python_shim


def test_the_shim_runs_this_interpreter_whatever_else_is_on_path(tmp_path: Path) -> None:
    bin_dir = python_shim(tmp_path / "head" / "bin")
    assert bin_dir == tmp_path / "head" / "bin"
    env = {**os.environ, "PATH": os.pathsep.join([str(bin_dir), "/usr/local/bin", "/usr/bin"])}
    out = subprocess.run(
        ["python", "-c", "import sys, detrforge; print(sys.prefix); print(detrforge.__version__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    import detrforge

    assert out.stdout.split() == [sys.prefix, detrforge.__version__]
    # Written again (a head restarted on the same temp dir): still one working script.
    python_shim(bin_dir)
    assert sorted(p.name for p in bin_dir.iterdir()) == ["python"]
