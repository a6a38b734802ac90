"""Cluster capacity checks of the launcher: pure functions over node resource totals."""

from __future__ import annotations

import pytest

from detrforge.platform.errors import ResourceUnavailableError
from detrforge.platform.launcher import require_capacity

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
