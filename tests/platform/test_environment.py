"""Environment capture: every pin present, true to the running interpreter, JSON-safe."""

from __future__ import annotations

import json
import os
import platform
import shutil
import stat
import subprocess
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch

import detrforge
from detrforge.platform import environment
from detrforge.platform.environment import ENVIRONMENT_KEYS, capture_environment

REPO = Path(__file__).resolve().parents[2]


def test_all_keys_with_sane_values() -> None:
    env = capture_environment(
        backend="onnxruntime",
        precision="fp32",
        checkpoint_sha256="ab" * 32,
        dataset_fingerprint="fp-1",
    )
    assert tuple(env) == ENVIRONMENT_KEYS
    assert json.loads(json.dumps(env)) == env
    try:
        assert env["detrforge"] == metadata.version("detrforge")
    except metadata.PackageNotFoundError:  # run from a source tree on PYTHONPATH
        assert env["detrforge"] == detrforge.__version__
    for package in ("rfdetr", "onnxruntime"):
        assert env[package] == metadata.version(package)
    # torch and torchvision keep their build tag (2.14.1+cu130), which the wheel metadata drops.
    import torchvision

    assert env["torch"] == torch.__version__
    assert env["torchvision"] == torchvision.__version__
    assert env["python"] == platform.python_version()
    assert env["os"] == platform.platform()
    assert env["cpu_count"] == os.cpu_count()
    assert isinstance(env["cpu_model"], str) and env["cpu_model"]
    assert env["backend"] == "onnxruntime" and env["precision"] == "fp32"
    assert env["checkpoint_sha256"] == "ab" * 32 and env["dataset_fingerprint"] == "fp-1"
    if torch.cuda.is_available():
        assert env["cuda"] == torch.version.cuda
        assert isinstance(env["gpu_name"], str) and isinstance(env["gpu_memory_mb"], int)
        assert isinstance(env["cudnn"], int)
    else:
        assert env["cuda"] is env["cudnn"] is env["gpu_name"] is env["gpu_memory_mb"] is None


def test_git_sha_of_this_checkout() -> None:
    env = capture_environment(backend="torch", precision="fp32")
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not running from a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        # e.g. a copy owned by another user, which git refuses as "dubious ownership".
        assert env["detrforge_git_sha"] is None
    else:
        assert env["detrforge_git_sha"] == head.stdout.strip()


def _fake_nvidia_smi(folder: Path, body: str) -> None:
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_driver_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvidia_smi(tmp_path / "bin", 'echo "550.54.15"')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert capture_environment(backend="torch", precision="fp32")["driver"] == "550.54.15"


def test_hanging_or_failing_nvidia_smi_gives_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_nvidia_smi(tmp_path / "hang", "exec sleep 30")  # exec: the kill reaches sleep
    monkeypatch.setenv("PATH", f"{tmp_path / 'hang'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(environment, "_COMMAND_TIMEOUT_S", 0.5)
    started = time.monotonic()
    assert capture_environment(backend="torch", precision="fp32")["driver"] is None
    assert time.monotonic() - started < 10

    _fake_nvidia_smi(tmp_path / "fail", "exit 9")
    monkeypatch.setenv("PATH", f"{tmp_path / 'fail'}{os.pathsep}{os.environ['PATH']}")
    assert capture_environment(backend="torch", precision="fp32")["driver"] is None
