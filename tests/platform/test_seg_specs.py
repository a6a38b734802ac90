"""Segmentation in the specs: seg-* sizes, the ``task`` field and its 422s, seg resolutions."""

from __future__ import annotations

from typing import Any

import pytest

from detrforge.detector.sizes import as_model_size, task_of
from detrforge.detector.specs import BenchmarkSpec, EvaluateSpec, FinetuneSpec, parse_spec
from detrforge.platform.errors import InvalidSpecError

CKPT = {"checkpoint": "/models/seg.pth"}


def _refused(cls: type[Any], body: dict[str, Any]) -> InvalidSpecError:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(cls, body)
    return info.value


@pytest.mark.parametrize(
    ("size", "task", "resolution"),
    [
        ("nano", "detection", 384),
        ("seg-nano", "segmentation", 312),
        ("seg-small", "segmentation", 384),
        ("seg-2xlarge", "segmentation", 768),
    ],
)
def test_task_and_resolution_default_from_the_size(size: str, task: str, resolution: int) -> None:
    spec = parse_spec(FinetuneSpec, {"dataset": "/d", "model_size": size})
    assert (spec.task, spec.res, spec.segmentation) == (task, resolution, task == "segmentation")
    assert task_of(size) == task and as_model_size(size) == size


@pytest.mark.parametrize(
    ("size", "task", "fragment"),
    [
        ("nano", "segmentation", "model size 'nano' is a detection model, not segmentation"),
        ("seg-large", "detection", "model size 'seg-large' is a segmentation model, not detection"),
    ],
)
def test_a_task_the_size_cannot_do_is_refused_on_task(size: str, task: str, fragment: str) -> None:
    error = _refused(FinetuneSpec, {"dataset": "/d", "model_size": size, "task": task})
    assert error.field == "task"
    assert fragment in error.message
    for cls, extra in ((EvaluateSpec, {"dataset": "/d"}), (BenchmarkSpec, {"target": "cpu"})):
        body = {**CKPT, **extra, "model_size": size, "task": task, "resolution": 144}
        assert _refused(cls, body).field == "task"


def test_an_unknown_task_is_refused_on_task() -> None:
    error = _refused(FinetuneSpec, {"dataset": "/d", "model_size": "seg-nano", "task": "pose"})
    assert error.field == "task"


@pytest.mark.parametrize(
    ("size", "resolution", "fragment"),
    [
        ("seg-nano", 100, "not divisible by 12 (patch size 12 x 1 window for RF-DETR seg-nano)"),
        ("seg-medium", 420, "not divisible by 24 (patch size 12 x 2 windows"),
    ],
)
def test_seg_resolutions_are_checked_on_resolution(
    size: str, resolution: int, fragment: str
) -> None:
    body = {"dataset": "/d", "model_size": size, "resolution": resolution}
    error = _refused(FinetuneSpec, body)
    assert error.field == "resolution"
    assert fragment in error.message


VARIANT = {"name": "onnx-int8", "uri": "file:///v", "model_file": "model.onnx", "sha256": "0" * 64}


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_seg_models_evaluate_and_benchmark_on_both_backends(backend: str) -> None:
    body = {**CKPT, "dataset": "/d", "model_size": "seg-nano", "resolution": 96}
    spec = parse_spec(EvaluateSpec, {**body, "backend": backend})
    assert (spec.task, spec.backend) == ("segmentation", backend)
    bench = {**CKPT, "target": "cpu", "model_size": "seg-nano", "resolution": 96}
    bench_spec = parse_spec(BenchmarkSpec, {**bench, "backend": backend})
    assert (bench_spec.task, bench_spec.backend) == ("segmentation", backend)
    # Optimized variants stay detection-only: a 422 on variant that names the way out.
    for cls, data in ((EvaluateSpec, body), (BenchmarkSpec, bench)):
        error = _refused(cls, {**data, "backend": backend, "variant": VARIANT})
        assert error.field == "variant"
        assert "no optimized variants yet" in error.message
        assert "backend torch or onnxruntime" in error.message


def test_a_sweep_mixing_detection_and_seg_sizes_is_refused_naming_the_field() -> None:
    from detrforge.detector.sweep_specs import SweepRequest

    body = {"dataset": "/d", "target": "t", "space": {"model_size": ["nano", "seg-nano"]}}
    error = _refused(SweepRequest, body)
    assert error.field == "space.model_size"
    assert "mixes detection and segmentation sizes" in error.message
    assert "sweep one task" in error.message
    task_searched = {**body, "space": {"model_size": ["seg-nano"], "task": ["segmentation"]}}
    assert _refused(SweepRequest, task_searched).field == "space.task"
    unknown = {**body, "space": {"model_size": ["seg-tiny"]}}
    error = _refused(SweepRequest, unknown)
    assert (error.field, "seg-2xlarge" in error.message) == ("space.model_size", True)


def test_a_seg_sweep_ranks_on_mask_ap_and_checks_resolutions_per_seg_size() -> None:
    from detrforge.detector.sweep_specs import SweepRequest, SweepSpec, ranking_metric

    space = {"model_size": ["seg-nano", "seg-small"], "resolution": [192, 240]}
    spec = parse_spec(SweepSpec, {"dataset": "/d", "target": "t", "space": space})
    assert (spec.task, spec.metric) == ("segmentation", "segm/AP")
    assert ranking_metric(spec.model_dump(mode="json")) == "segm/AP"
    assert [spec.trial_spec({"model_size": s}).task for s in space["model_size"]] == [
        "segmentation",
        "segmentation",
    ]
    detection = parse_spec(SweepSpec, {"dataset": "/d", "target": "t"})
    assert (detection.metric, ranking_metric(detection.model_dump(mode="json"))) == (
        "bbox/AP",
        "bbox/AP",
    )
    # 180 = 12 x 15 fits seg-nano's one window, not seg-small's 24-pixel grid.
    bad = {"dataset": "/d", "target": "t", "space": {**space, "resolution": [180]}}
    error = _refused(SweepRequest, bad)
    assert error.field == "space.resolution"
    assert "seg-small" in error.message
