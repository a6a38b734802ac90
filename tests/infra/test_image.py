"""The image definition (``infra/Dockerfile``) checked without Docker: its install step is
``infra/install.sh``, the same script ``make venv`` runs and so CI (``.ci/run`` -> ``make test``
-> ``venv``); its base image and PyTorch variant are pinned; the build context holds what it
copies."""

from __future__ import annotations

import re
import subprocess

from infra_files import INFRA, REPO

INSTALL = "infra/install.sh"


def _instructions(text: str) -> list[tuple[str, str]]:
    """A Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            found.append((instruction.upper(), " ".join(arguments.split())))
    return found


def _make_recipe(target: str) -> list[str]:
    """The recipe lines of one Makefile rule."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_the_image_installs_with_the_script_ci_uses() -> None:
    steps = _instructions((INFRA / "Dockerfile").read_text())
    runs = [arguments for instruction, arguments in steps if instruction == "RUN"]
    installs = [run for run in runs if INSTALL in run]
    assert len(installs) == 1, runs
    assert installs[0].endswith(f"bash {INSTALL} /opt/venv variants")
    # Nothing else installs Python packages into the image.
    assert not [run for run in runs if "pip" in run and INSTALL not in run]
    copies = [arguments for instruction, arguments in steps if instruction == "COPY"]
    assert any(INSTALL in copy for copy in copies)


def test_make_venv_and_so_ci_run_the_same_script() -> None:
    recipe = _make_recipe("$(VENV)/.installed")
    assert recipe[0] == f"PYTHON=$(PYTHON) bash {INSTALL} $(VENV) dev"
    makefile = (REPO / "Makefile").read_text()
    assert "pip install" not in makefile
    assert re.search(r"^\$\(VENV\)/\.installed: .*infra/install\.sh", makefile, re.M)
    assert re.search(r"^test: venv$", makefile, re.M)
    assert "\nmake test\n" in (REPO / ".ci" / "run").read_text()


def test_the_install_script_installs_this_project_from_pyproject() -> None:
    script = (REPO / INSTALL).read_text()
    assert re.search(r'pip install --quiet -e "\.\$\{extras:\+\[\$extras\]\}"', script)
    assert re.search(r'pip install --quiet "pip==\$pip_version"', script)
    assert re.search(r"^pip_version=\d+\.\d+(\.\d+)?$", script, re.M)
    checked = subprocess.run(["bash", "-n", REPO / INSTALL], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    usage = subprocess.run(["bash", REPO / INSTALL], capture_output=True, text=True)
    assert (usage.returncode, usage.stderr.strip()) == (2, f"usage: {REPO / INSTALL} VENV [EXTRAS]")


def test_the_base_image_and_the_torch_variant_are_pinned() -> None:
    steps = _instructions((INFRA / "Dockerfile").read_text())
    args = dict(arguments.split("=", 1) for instruction, arguments in steps if instruction == "ARG")
    # A full Python patch version on a named Debian release, the Python pyproject allows.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", args["PYTHON_IMAGE"])
    assert ("FROM", "${PYTHON_IMAGE}") in steps
    assert args["TORCH_VARIANT"] == "cpu"
    (install,) = (a for i, a in steps if i == "RUN" and INSTALL in a)
    assert 'PIP_EXTRA_INDEX_URL="https://download.pytorch.org/whl/${TORCH_VARIANT}"' in install


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[1] == "*"  # after the comment line: everything is excluded unless listed
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    steps = _instructions((INFRA / "Dockerfile").read_text())
    sources = {
        source.rstrip("/")
        for instruction, arguments in steps
        if instruction == "COPY"
        for source in arguments.split()[:-1]
        if not source.startswith("--")
    }
    assert sources == included
    assert all((REPO / source).exists() for source in sources)
