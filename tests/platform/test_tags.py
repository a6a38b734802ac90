"""MLflow tag names live in one module: jobs write and the API reads the same constants."""

from __future__ import annotations

import re
from pathlib import Path

from detrforge.platform.tags import Tag

SRC = Path(__file__).resolve().parents[2] / "src" / "detrforge"
# No closing quote: an f-string prefix (f"detrforge.env.{key}") is a tag name too.
_LITERAL = re.compile(r"[\"']detrforge\.([a-z0-9_]+)")
_MODULES = {"api", "cli", "control", "jobs", "platform", "registry"}


def test_no_tag_name_is_spelled_outside_the_tags_module() -> None:
    strays = [
        f"{path.relative_to(SRC)}: detrforge.{match.group(1)}"
        for path in SRC.rglob("*.py")
        if path.name != "tags.py"
        for match in _LITERAL.finditer(path.read_text())
        if match.group(1) not in _MODULES
    ]
    assert strays == []


def test_tag_names_are_unique_and_namespaced() -> None:
    values = [v for k, v in vars(Tag).items() if k.isupper()]
    assert len(values) == len(set(values)) >= 20
    assert all(v.startswith("detrforge.") for v in values)


def test_environment_tags_share_one_prefix() -> None:
    assert Tag.env("torch") == "detrforge.env.torch"
    assert Tag.env("torch").startswith(Tag.ENV_PREFIX)
