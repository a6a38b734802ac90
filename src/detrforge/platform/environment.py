"""The software and hardware a benchmark or evaluation ran on, as the pins a record keeps.

Nothing here raises: a fact that cannot be read (no git checkout, no GPU, no ``nvidia-smi``) is
``None``. Every value is a JSON scalar.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["ENVIRONMENT_KEYS", "EnvValue", "capture_environment"]

EnvValue = str | int | None

ENVIRONMENT_KEYS: tuple[str, ...] = (
    "detrforge",
    "detrforge_git_sha",
    "rfdetr",
    "torch",
    "torchvision",
    "onnxruntime",
    "python",
    "os",
    "cpu_model",
    "cpu_count",
    "cuda",
    "cudnn",
    "driver",
    "gpu_name",
    "gpu_memory_mb",
    "backend",
    "precision",
    "checkpoint_sha256",
    "dataset_fingerprint",
)

_COMMAND_TIMEOUT_S = 5.0


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _run(args: list[str], cwd: Path | None = None) -> str | None:
    """A command's stripped stdout, or None when it is missing, fails or hangs."""
    try:
        result = subprocess.run(
            args,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _git_sha() -> str | None:
    """HEAD of the checkout the package's source is tracked in; None for an installed wheel."""
    if shutil.which("git") is None:
        return None
    package_dir = Path(__file__).resolve().parents[1]
    # A wheel under a venv that sits inside some repository is not that repository's code:
    # only a tracked source file proves the package comes from the checkout.
    if _run(["git", "ls-files", "--error-unmatch", "__init__.py"], cwd=package_dir) is None:
        return None
    sha = _run(["git", "rev-parse", "HEAD"], cwd=package_dir)
    return sha if sha and len(sha) >= 40 else None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _gpu_facts() -> dict[str, EnvValue]:
    facts: dict[str, EnvValue] = {
        "cuda": None,
        "cudnn": None,
        "gpu_name": None,
        "gpu_memory_mb": None,
    }
    try:
        import torch

        if not torch.cuda.is_available():
            return facts
        index = torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        cudnn_module: Any = torch.backends.cudnn  # its functions are untyped
        cudnn = cudnn_module.version() if cudnn_module.is_available() else None
        facts.update(
            cuda=torch.version.cuda,
            cudnn=int(cudnn) if cudnn is not None else None,
            gpu_name=str(properties.name),
            gpu_memory_mb=int(properties.total_memory // (1024 * 1024)),
        )
    except Exception:  # a broken driver must not fail the benchmark that asked
        pass
    return facts


def _driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def _module_version(name: str) -> str | None:
    try:
        module = __import__(name)
    except ImportError:
        return None
    return str(getattr(module, "__version__", None) or _version(name))


def capture_environment(
    *,
    backend: str,
    precision: str,
    checkpoint_sha256: str | None = None,
    dataset_fingerprint: str | None = None,
) -> dict[str, EnvValue]:
    """The versions, hardware and run settings under :data:`ENVIRONMENT_KEYS`."""
    from detrforge import __version__

    env: dict[str, EnvValue] = {
        "detrforge": _version("detrforge") or __version__,
        "detrforge_git_sha": _git_sha(),
        "rfdetr": _version("rfdetr"),
        # The module's own version keeps the build tag (2.14.1+cu130 vs +cpu); the wheel's drops it.
        "torch": _module_version("torch"),
        "torchvision": _module_version("torchvision"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "python": platform.python_version(),
        "os": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    env.update(_gpu_facts())
    env.update(
        driver=_driver(),
        backend=backend,
        precision=precision,
        checkpoint_sha256=checkpoint_sha256,
        dataset_fingerprint=dataset_fingerprint,
    )
    # Fixed key order, whatever the dict updates did.
    return {key: env[key] for key in ENVIRONMENT_KEYS}
