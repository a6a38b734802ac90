"""Fine-tune spec validation: every rule gives a precise message naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from detrforge.detector.sizes import as_model_size, check_resolution, nearest_resolutions
from detrforge.detector.specs import BenchmarkRequest, EvaluateRequest, FinetuneSpec, parse_spec
from detrforge.detector.sweep_specs import SweepRequest, SweepSpec
from detrforge.platform.errors import InvalidSpecError

BASE: dict[str, Any] = {"dataset": "/data/ds"}


def _error(**changes: Any) -> InvalidSpecError:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(FinetuneSpec, {**BASE, **changes})
    return info.value


def test_defaults_follow_rfdetr() -> None:
    spec = parse_spec(FinetuneSpec, BASE)
    assert spec.model_size == "nano"
    assert spec.resolution == 384
    assert parse_spec(FinetuneSpec, {**BASE, "model_size": "large"}).resolution == 704
    assert spec.num_queries is None and spec.group_detr is None
    assert spec.pretrain_weights is None


@pytest.mark.parametrize(("resolution", "near"), [(130, "128 or 160"), (500, "480 or 512")])
def test_resolution_not_divisible_names_nearest(resolution: int, near: str) -> None:
    err = _error(resolution=resolution)
    assert err.field == "resolution"
    assert f"resolution {resolution} is not divisible by 32" in err.message
    assert near in err.message


def test_resolution_out_of_range() -> None:
    err = _error(resolution=32)
    assert err.field == "resolution"
    assert "out of range" in err.message
    assert _error(resolution=4096).field == "resolution"


def test_nearest_resolutions() -> None:
    assert nearest_resolutions(130, 32) == [128, 160]
    assert nearest_resolutions(10, 32) == [64, 96]
    check_resolution("small", 512)
    with pytest.raises(ValueError, match="unknown model size"):
        check_resolution("huge", 512)


def test_unknown_model_size() -> None:
    err = _error(model_size="xlarge")
    assert err.field == "model_size"
    assert "'nano'" in err.message and "'large'" in err.message


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("epochs", 0, "greater than or equal to 1"),
        ("batch_size", 0, "greater than or equal to 1"),
        ("grad_accum_steps", 0, "greater than or equal to 1"),
        ("lr", 0, "greater than 0"),
        ("lr_encoder", -1, "greater than 0"),
        ("weight_decay", -0.1, "greater than or equal to 0"),
        ("early_stopping_patience", 0, "greater than or equal to 1"),
        ("early_stopping_min_delta", -1, "greater than or equal to 0"),
        ("freeze_encoder_epochs", -1, "greater than or equal to 0"),
        ("num_workers", 0, "greater than or equal to 1"),
        ("max_failures", -2, "greater than or equal to -1"),
        ("checkpoint_frequency", 0, "greater than or equal to 1"),
        ("num_queries", 0, "greater than or equal to 1"),
        ("group_detr", 0, "greater than or equal to 1"),
        ("seed", "abc", "valid integer"),
        ("use_ema", "maybe", "valid boolean"),
        ("use_gpu", "maybe", "valid boolean"),
        ("gradient_checkpointing", "maybe", "valid boolean"),
    ],
)
def test_numeric_and_flag_rules(field: str, value: Any, fragment: str) -> None:
    err = _error(**{field: value})
    assert err.field == field
    assert fragment in err.message


def test_unknown_field_rejected() -> None:
    err = _error(learning_rate=0.1)
    assert err.field == "learning_rate"
    assert "Extra inputs are not permitted" in err.message


def test_missing_dataset() -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(FinetuneSpec, {})
    assert info.value.field == "dataset"


def test_negative_resources_rejected() -> None:
    err = _error(resources_per_worker={"CPU": -1})
    assert err.field == "resources_per_worker"
    assert "must be a finite number above 0" in err.message


def test_weights_from_the_internet_rejected() -> None:
    err = _error(pretrain_weights="https://example.com/w.pth")
    assert err.field == "pretrain_weights"
    assert "never downloaded" in err.message
    assert parse_spec(FinetuneSpec, {**BASE, "pretrain_weights": "s3://b/w.pth"}).pretrain_weights


def test_freeze_must_end_before_training_does() -> None:
    err = _error(epochs=3, freeze_encoder_epochs=3)
    assert err.field == "freeze_encoder_epochs"
    assert "never unfrozen" in err.message
    assert parse_spec(FinetuneSpec, {**BASE, "epochs": 3, "freeze_encoder_epochs": 2})


def test_spec_is_frozen_and_round_trips() -> None:
    spec = parse_spec(FinetuneSpec, {**BASE, "resolution": 128})
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type
        spec.epochs = 3  # type: ignore[misc]
    assert FinetuneSpec.model_validate_json(spec.model_dump_json()) == spec


# -- requests: what the API accepts before the control layer resolves weights and targets -------
CHECKPOINT = "/models/m.pth"


@pytest.mark.parametrize("request_cls", [EvaluateRequest, BenchmarkRequest])
@pytest.mark.parametrize(
    "weights", [{}, {"checkpoint": CHECKPOINT, "job_id": "j1"}], ids=["neither", "both"]
)
def test_a_request_names_its_weights_exactly_once(
    request_cls: type[EvaluateRequest] | type[BenchmarkRequest], weights: dict[str, Any]
) -> None:
    body = {"dataset": "/data/d", "target": "cpu-local", **weights}
    if request_cls is EvaluateRequest:
        del body["target"]
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(request_cls, body)
    assert caught.value.field == "checkpoint"
    assert caught.value.message == (
        "checkpoint: give exactly one of checkpoint (a checkpoint URI) and job_id (a SUCCEEDED "
        "fine-tune job)"
    )


def test_a_benchmark_request_leaves_the_profile_to_its_target() -> None:
    request = parse_spec(BenchmarkRequest, {"job_id": "j1", "target": "cpu-local"})
    assert (request.backend, request.precision, request.batch_size, request.num_threads) == (
        None,
        None,
        None,
        None,
    )
    # The resolved resources are the server's to fill, never the caller's.
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(BenchmarkRequest, {"job_id": "j1", "target": "t", "target_resources": {}})
    assert caught.value.field == "target_resources"
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(SweepRequest, {"dataset": "/d", "target": "t", "target_resources": {"CPU": 1}})
    assert caught.value.field == "target_resources"


def test_a_sweep_spec_is_its_request_with_the_targets_profile() -> None:
    request = parse_spec(SweepRequest, {"dataset": "/d", "target": "t", "base": {"epochs": 2}})
    assert request.backend is None
    spec = parse_spec(
        SweepSpec, {**request.model_dump(), "backend": "onnxruntime", "target_resources": {"X": 1}}
    )
    assert (spec.backend, spec.target_resources, spec.base) == (
        "onnxruntime",
        {"X": 1.0},
        {"epochs": 2},
    )
    # The request's own checks run on both: a bad space is refused before any target is read.
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(SweepRequest, {"dataset": "/d", "target": "t", "space": {"resolution": [100]}})
    assert caught.value.field == "space.resolution"


def test_a_stored_model_size_is_checked_before_it_builds_a_request() -> None:
    assert as_model_size("small") == "small"
    with pytest.raises(InvalidSpecError) as caught:
        as_model_size("huge")
    assert (caught.value.field, caught.value.message) == (
        "model_size",
        "model_size: unknown model size 'huge'; choose from nano, small, medium, large, "
        "seg-nano, seg-small, seg-medium, seg-large, seg-xlarge, seg-2xlarge",
    )


@pytest.mark.parametrize(
    ("size", "resolution", "message"),
    [
        ("seg-nano", 320, "resolution 320 is not divisible by 12 (patch size 12 x 1 window for "
         "RF-DETR seg-nano); use 312 or 324"),
        ("seg-small", 400, "resolution 400 is not divisible by 24 (patch size 12 x 2 windows for "
         "RF-DETR seg-small); use 384 or 408"),
        ("seg-2xlarge", 2039, "resolution 2039 is not divisible by 24 (patch size 12 x 2 windows "
         "for RF-DETR seg-2xlarge); use 2016 or 2040"),
        ("seg-large", 60, "resolution 60 is out of range; use a multiple of 24 between 72 and "
         "2040"),
        ("nano", 130, "resolution 130 is not divisible by 32 (patch size 16 x 2 windows for "
         "RF-DETR nano); use 128 or 160"),
    ],
)  # fmt: skip
def test_segmentation_sizes_check_their_own_multiple(
    size: str, resolution: int, message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        check_resolution(size, resolution)
    assert str(caught.value) == message


def test_segmentation_defaults_are_valid() -> None:
    from detrforge.detector.sizes import MODEL_SIZES, SEG_MODEL_SIZES

    for size, (default, _) in SEG_MODEL_SIZES.items():
        check_resolution(size, default)
    assert nearest_resolutions(2047, 24) == [2040]
    assert not set(SEG_MODEL_SIZES) & set(MODEL_SIZES)
    # A seg size's own default resolution, not the detection default (see test_seg_specs.py).
    err = _error(model_size="seg-nano", resolution=390)
    assert err.field == "resolution"


@pytest.mark.parametrize(
    ("extra", "field", "fragment"),
    [
        ({"max_ratio": 1.2}, "max_ratio", "a ratio needs a baseline"),
        ({"max_rounds": 3}, "max_rounds", "only against a max_ratio"),
        (
            {"baseline": {"checkpoint": CHECKPOINT, "resolution": 100}},
            "baseline.resolution",
            "not divisible by 32",
        ),
        (
            {"baseline": {"checkpoint": CHECKPOINT}, "batch_size": 4},
            "batch_size",
            "times batch size 1",
        ),
        ({"baseline": {"checkpoint": CHECKPOINT}, "confidence": 1.0}, "confidence", "0.999"),
    ],
)
def test_paired_benchmark_options_name_the_field_to_fix(
    extra: dict[str, Any], field: str, fragment: str
) -> None:
    body = {"checkpoint": CHECKPOINT, "target": "cpu-local", **extra}
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(BenchmarkRequest, body)
    assert caught.value.field == field
    assert fragment in caught.value.message


def test_a_paired_benchmark_request_is_accepted_with_its_baseline() -> None:
    request = parse_spec(
        BenchmarkRequest,
        {
            "checkpoint": CHECKPOINT,
            "target": "cpu-local",
            "baseline": {"checkpoint": CHECKPOINT, "resolution": 128, "model_version": 1},
            "max_ratio": 1.2,
            "max_rounds": 3,
        },
    )
    assert request.baseline is not None
    assert (request.baseline.resolution, request.baseline.model_size) == (128, "nano")
    assert (request.max_ratio, request.max_rounds, request.confidence) == (1.2, 3, 0.95)
