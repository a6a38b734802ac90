"""The dependency direction of the packages, read from every module's imports (ray's
``test_circular_imports.py`` is the model): api -> control -> registry/detector/platform,
detector -> platform, jobs -> detector/platform, cli -> the API over HTTP (plus the server-side
commands), and nothing below imports what is above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "detrforge"

# package -> the detrforge packages (and third-party roots) it must never import.
FORBIDDEN: dict[str, set[str]] = {
    "platform": {"api", "cli", "control", "detector", "jobs", "registry", "fastapi"},
    "detector": {"api", "cli", "control", "jobs", "registry", "fastapi"},
    "registry": {"api", "cli", "control", "detector", "jobs", "fastapi"},
    "jobs": {"api", "cli", "control", "registry", "fastapi"},
    "control": {"api", "cli", "fastapi"},
    "api": {"cli"},
}


def _imports(path: Path) -> set[str]:
    """Top-level names this module imports: ``detrforge.<pkg>`` as ``<pkg>``, others as roots."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            names.add(parts[1] if parts[0] == "detrforge" and len(parts) > 1 else parts[0])
    return names


def _modules(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_upward(package: str) -> None:
    offenders = {
        f"{path.relative_to(SRC)} imports {name}"
        for path in _modules(package)
        for name in _imports(path) & FORBIDDEN[package]
    }
    assert not offenders, sorted(offenders)


def test_the_walk_sees_every_package() -> None:
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    assert packages - set(FORBIDDEN) <= {"cli"}, "a new package needs its rules here"
    assert len(_modules("api")) > 10 and len(_modules("platform")) > 10
    assert len(_modules("control")) >= 3 and len(_modules("detector")) >= 8


def _detrforge_modules(path: Path) -> set[str]:
    """The full ``detrforge.*`` module names ``path`` imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("detrforge.")}


# What promotion.py may import from control/: pieces of the machine itself, none of them a service.
PROMOTION_PARTS = {
    "detrforge.control.failpoints",
    "detrforge.control.integrity",
    "detrforge.control.leases",
    "detrforge.control.needs",
}


def test_the_promotion_machine_knows_only_stores_gates_and_its_runner_protocol() -> None:
    # The walk from route to commit goes down only: promotion.py never reaches sideways into
    # the job service or the cluster; it asks its EvidenceRunner (evidence.py implements it).
    imports = _detrforge_modules(SRC / "control" / "promotion.py")
    assert not {m for m in imports if m.startswith("detrforge.control.")} - PROMOTION_PARTS
    for part in PROMOTION_PARTS:
        part_imports = _detrforge_modules(SRC / "control" / f"{part.rsplit('.', 1)[1]}.py")
        assert not {m for m in part_imports if m.startswith("detrforge.control.")}, part
    assert not {m for m in imports if m.startswith("detrforge.platform.launcher")}, imports
    # evidence.py implements the runner protocol the machine's needs define.
    assert "detrforge.control.needs" in _detrforge_modules(SRC / "control" / "evidence.py")
