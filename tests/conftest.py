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
    "fixtures_seg",
]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep ``xdist_group`` tests on one worker under ``--dist loadgroup`` (``make test``).

    pytest-xdist 3.8 tags a grouped test by appending ``@group`` to ``item._nodeid``, which
    pytest 9 no longer reads (a node's id lives in ``item._id``): every group was spread over
    both workers, so a group's session fixtures (the seg fine-tune, the wheel cluster, the
    variants build) ran once per worker. This tags the id pytest 9 uses, as xdist means to.
    """
    if not getattr(config.option, "loadgroup", False):  # set on xdist workers only
        return
    from _pytest.nodeid import coerce_node_id

    for item in items:
        groups = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        if groups and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(sorted(groups))}")


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
