"""The deployment files under ``infra/`` as the tests beside this module read them: the compose
file with its variables filled in from ``infra/env.example`` (as ``docker compose`` would), the
Kubernetes manifests, and the environment names detrforge's settings read, derived from the
pydantic model itself so that a renamed or new setting needs no list updated here."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices

from detrforge.platform.settings import Settings

__all__ = [
    "INFRA",
    "K8S",
    "REPO",
    "compose",
    "compose_environment",
    "compose_variables",
    "env_example",
    "interpolate",
    "manifests",
    "settings_env_names",
]

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"

# Compose's interpolation: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error},
# ${NAME?error}; `$$` is a literal dollar sign.
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def settings_env_names() -> frozenset[str]:
    """Every environment name ``Settings`` reads: its aliases, else the prefix plus the field."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}")
    # pydantic-settings matches environment names case-insensitively by default.
    return frozenset(name.upper() for name in names)


def env_example() -> dict[str, str]:
    """``infra/env.example``: the variables a user copies to ``infra/.env``."""
    values = {}
    for line in (INFRA / "env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(text: str, values: dict[str, str]) -> str:
    """Fill compose variables in ``text`` from ``values``; a required one missing raises."""

    def fill(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = values.get(name)
        unset_or_empty = not value if op and op.startswith(":") else value is None
        if op in (":?", "?") and unset_or_empty:
            raise KeyError(f"compose needs {name}: {arg}")
        if op in (":-", "-") and unset_or_empty:
            return arg
        return value or ""

    return _VARIABLE.sub(fill, text.replace("$$", "\0")).replace("\0", "$")


def compose_variables() -> dict[str, set[str]]:
    """Each variable ``infra/compose.yaml`` interpolates, with the operators it is used with."""
    found: dict[str, set[str]] = {}
    for match in _VARIABLE.finditer((INFRA / "compose.yaml").read_text()):
        found.setdefault(match["name"], set()).add(match["op"] or "")
    return found


@cache
def _compose(values: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    text = interpolate((INFRA / "compose.yaml").read_text(), dict(values))
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def compose(values: dict[str, str] | None = None) -> dict[str, Any]:
    """``infra/compose.yaml`` parsed, its variables taken from ``values`` (default: env.example)."""
    chosen = env_example() if values is None else values
    return _compose(tuple(sorted(chosen.items())))


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment (mapping or list form) as names to string values."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.partition("=") for item in environment)
        return {name: value for name, _, value in pairs}
    return {name: "" if value is None else str(value) for name, value in environment.items()}


@cache
def manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    """Every Kubernetes object under ``infra/k8s`` (the kustomization itself excluded), with
    the name of its file. Parsed once: callers copy before they change one."""
    objects: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        objects.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return tuple(objects)
