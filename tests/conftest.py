"""Shared fixtures; heavier ones live in the ``fixtures_*`` plugin modules beside this file."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "fixtures_s3",
    "fixtures_db",
    "fixtures_cluster",
    "fixtures_models",
    "fixtures_mlflow",
    "fixtures_console",
    "fixtures_topology",
]

# What a developer's shell may point at real systems: a test sets every store it uses itself,
# so it can never touch a real database, tracking server, bucket or cluster by inheritance.
_REAL_SYSTEMS = ("DETRFORGE_", "AWS_", "MLFLOW_TRACKING_", "MLFLOW_REGISTRY_", "RAY_ADDRESS")
_KEEP = {"DETRFORGE_TEST_DATABASE_URL"}


@pytest.fixture(scope="session", autouse=True)
def _no_inherited_stores() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):
            if name.startswith(_REAL_SYSTEMS) and name not in _KEEP:
                env.delenv(name)
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield
