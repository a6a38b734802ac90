"""The launcher: cluster capacity checks (pure functions over node resource totals), the
entrypoint and environment every job is sent, and the version check a job makes first."""

from __future__ import annotations

import sys

import pytest

from detrforge import __version__
from detrforge.jobs.driver import check_api_version
from detrforge.platform.errors import ClusterError, ResourceUnavailableError
from detrforge.platform.launcher import API_VERSION_ENV, Launcher, require_capacity
from detrforge.platform.settings import Settings

NODES = [{"CPU": 2.0, "memory": 8e9}, {"CPU": 1.0, "GPU": 1.0, "memory": 4e9}]


@pytest.mark.parametrize(
    ("per_worker", "workers"),
    [
        ({"CPU": 1.0}, 3),
        ({"CPU": 0.25}, 12),  # 8 on the first node, 4 on the second
        ({"CPU": 0.2}, 15),  # 10 + 5, although 1.0 // 0.2 == 4.0 in floating point
        ({"CPU": 1.0, "GPU": 1.0}, 1),
        ({"memory": 4e9}, 3),
    ],
)
def test_fits(per_worker: dict[str, float], workers: int) -> None:
    require_capacity(NODES, per_worker, workers)


@pytest.mark.parametrize(
    ("per_worker", "workers", "field", "fragment"),
    [
        ({"CPU": 1.0}, 4, "num_workers", "hold 3 such worker(s)"),
        ({"CPU": 1.5}, 2, "num_workers", "hold 1 such worker(s)"),  # 3 CPUs, but split 2 + 1
        ({"CPU": 3.0}, 1, "resources_per_worker", "no node in the cluster offers"),
        ({"CPU": 1.0, "GPU": 1.0}, 2, "num_workers", "hold 1 such worker(s)"),
        ({"TPU": 1.0}, 1, "resources_per_worker", "no node in the cluster offers"),
    ],
)
def test_does_not_fit(
    per_worker: dict[str, float], workers: int, field: str, fragment: str
) -> None:
    with pytest.raises(ResourceUnavailableError) as caught:
        require_capacity(NODES, per_worker, workers)
    assert caught.value.field == field
    assert fragment in caught.value.message


def test_no_alive_nodes() -> None:
    with pytest.raises(ResourceUnavailableError) as caught:
        require_capacity([], {"CPU": 1.0}, 1)
    assert caught.value.field == "resources_per_worker"


def test_the_entrypoint_names_python_as_the_node_resolves_it() -> None:
    launcher = Launcher("http://127.0.0.1:8265", env={"HF_HUB_OFFLINE": "1"})
    entrypoint = launcher.entrypoint("detrforge.jobs.evaluate", ["--spec", '{"a": "b c"}'])
    assert entrypoint == 'python -m detrforge.jobs.evaluate --spec \'{"a": "b c"}\''
    assert sys.executable not in entrypoint
    # Every job carries the API's version, which the job checks first.
    assert launcher.env == {"HF_HUB_OFFLINE": "1", API_VERSION_ENV: __version__}


def test_a_configured_job_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETRFORGE_JOB_PYTHON", "/opt/detrforge/bin/python")
    launcher = Launcher("http://127.0.0.1:8265", python=Settings().job_python)
    assert launcher.entrypoint("detrforge.jobs.sweep", []) == (
        "/opt/detrforge/bin/python -m detrforge.jobs.sweep"
    )


def test_the_job_python_defaults_to_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DETRFORGE_JOB_PYTHON", raising=False)
    assert Settings().job_python == "python"


@pytest.mark.parametrize(("api", "fails"), [(__version__, False), ("9.9.9", True), (None, False)])
def test_a_job_checks_the_api_version_first(api: str | None, fails: bool) -> None:
    if not fails:
        check_api_version(api)
        return
    with pytest.raises(ClusterError) as caught:
        check_api_version(api)
    assert caught.value.message == (
        f"detrforge {__version__} on this node, the API is 9.9.9: install the same version on "
        "the cluster's image"
    )
