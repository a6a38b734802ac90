"""Bad input to POST /sweeps: a 422 naming the field, and nothing reaches Ray.

``offline_api`` points at a Ray address where nothing listens, so a submission attempt would
answer 503; a 422 with no job recorded proves validation stopped the request first.
"""

from __future__ import annotations

from typing import Any

import pytest

from detrforge.detector.specs import parse_spec
from detrforge.detector.sweep_specs import SweepSpec
from detrforge.platform.errors import InvalidSpecError
from fixtures_cluster import ApiHarness

VALID: dict[str, Any] = {
    "dataset": "/nonexistent/ds",
    "space": {"model_size": ["nano", "small"], "resolution": [128, 160]},
    "base": {"num_queries": 50, "group_detr": 1},
    "target": "cpu-x86",
}


def _assert_rejected(api: ApiHarness, body: dict[str, Any]) -> dict[str, Any]:
    response = api.client.post("/api/v1/sweeps", json=body, headers=api.headers())
    assert response.status_code == 422, response.text
    listing = api.client.get("/api/v1/sweeps", headers=api.headers()).json()
    assert listing["total"] == 0
    return dict(response.json())


def _with(**changes: Any) -> dict[str, Any]:
    body = {**VALID, **changes}
    return body


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        (_with(space={"model_size": []}), "space.model_size", "at least one"),
        (_with(space={"model_size": ["nano"], "lr": []}), "space.lr", "choices is empty"),
        (
            _with(space={"model_size": ["nano"], "resolution": [130]}),
            "space.resolution",
            "128 or 160",
        ),
        (
            _with(space={"model_size": ["nano", "small"], "resolution": [128, 200]}),
            "space.resolution",
            "192 or 224",
        ),
        (
            _with(space={"model_size": ["nano", "huge"]}),
            "space.model_size",
            "unknown model size 'huge'",
        ),
        (_with(space={"model_size": ["nano"], "lr": [1e-4, 0]}), "space.lr", "greater than 0"),
        (_with(space={"model_size": ["nano"], "colour": ["red"]}), "space.colour", "cannot search"),
        (
            _with(space={"model_size": ["nano"], "lr": {"low": 1e-5, "high": 1e-3}}),
            "space.lr",
            "grid search needs a list",
        ),
        (
            _with(search="random", space={"lr": {"low": 1e-3, "high": 1e-5}}),
            "space.lr",
            "must not exceed",
        ),
        (_with(base={"num_workers": 2}), "base.num_workers", "cannot be set"),
        (_with(base={"num_queries": 0}), "base", "greater than or equal to 1"),
        (
            _with(
                space={"model_size": ["nano"], "epochs": [2, 4]}, base={"freeze_encoder_epochs": 3}
            ),
            "space.epochs",
            "freeze_encoder_epochs",
        ),
        (
            _with(scheduler={"type": "asha", "grace_period": 5, "max_epochs": 3}),
            "scheduler.grace_period",
            "exceeds",
        ),
        (_with(scheduler={"type": "hyperband"}), "scheduler.type", "asha"),
        (_with(scheduler={"reduction_factor": 1}), "scheduler.reduction_factor", "greater than 1"),
        (_with(search="optuna"), "search", "not installed"),
        (_with(search="bayes"), "search", "grid"),
        (_with(target=""), "target", "at least 1"),
        (_with(resources_per_trial={"cpu": 0}), "resources_per_trial.cpu", "greater than 0"),
        (_with(latency_sla_ms=-5), "latency_sla_ms", "greater than 0"),
        (_with(max_concurrent_trials=0), "max_concurrent_trials", "greater than or equal to 1"),
        # Found by the contract test: an unhashable choice was a 500 (TypeError).
        (_with(space={"model_size": [["nano"]]}), "space.model_size", "unknown model size"),
        (_with(space={"model_size": [{"a": 1}]}), "space.model_size", "unknown model size"),
    ],
)
def test_invalid_sweep_is_422_naming_the_field(
    offline_api: ApiHarness, body: dict[str, Any], field: str, fragment: str
) -> None:
    error = _assert_rejected(offline_api, body)
    assert error["code"] in {"INVALID_SPEC", "INVALID_REQUEST"}
    assert error["field"] == field, error
    assert fragment in error["message"], error


def test_target_must_exist(offline_api: ApiHarness) -> None:
    response = offline_api.client.post("/api/v1/sweeps", json=VALID, headers=offline_api.headers())
    assert response.status_code == 404, response.text
    assert "cpu-x86" in response.json()["message"]


def test_valid_spec_gives_trial_specs_and_max_epochs() -> None:
    spec: SweepSpec = parse_spec(
        SweepSpec,
        {
            **VALID,
            "space": {"model_size": ["nano", "small"], "lr": [1e-4, 5e-4]},
            "base": {"num_queries": 50, "group_detr": 1, "epochs": 4},
            "resources_per_trial": {"cpu": 0.5, "gpu": 1},
            "seed": 7,
        },
    )
    assert spec.max_epochs == 4
    trial = spec.trial_spec({"model_size": "small", "lr": 5e-4})
    assert (trial.model_size, trial.res, trial.lr, trial.epochs) == ("small", 512, 5e-4, 4)
    assert trial.num_workers == 1 and trial.use_gpu and trial.seed == 7
    assert trial.resources_per_worker == {"CPU": 0.5, "GPU": 1.0}
    assert spec.scheduler.type == "asha" and spec.search == "grid"
    ranged: SweepSpec = parse_spec(
        SweepSpec,
        {**VALID, "search": "random", "space": {"epochs": {"low": 2, "high": 6, "integer": True}}},
    )
    assert ranged.max_epochs == 6
    assert ranged.trial_spec({"epochs": 3.4}).epochs == 3


def test_parse_spec_error_names_the_field() -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(SweepSpec, {**VALID, "space": {"resolution": [100]}})
    assert info.value.field == "space.resolution"
    assert "use 96 or 128" in info.value.message
