"""Latency statistics (exact percentile values) and the measuring loop."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from detrforge.detector.latency import LatencyStats, encode_images, measure_latency
from detrforge.detector.predictor import Detections, Predictor, RawOutputs
from detrforge.detector.torch_predictor import TorchPredictor
from detrforge.platform.errors import InvalidSpecError


def test_stats_of_one_to_ten() -> None:
    stats = LatencyStats.from_samples([float(v) for v in range(10, 0, -1)])
    # Linear interpolation at rank (n - 1) * q of the sorted samples 1..10.
    assert stats.p50 == pytest.approx(5.5)
    assert stats.p95 == pytest.approx(9.55)
    assert stats.p99 == pytest.approx(9.91)
    assert stats.mean == pytest.approx(5.5)
    assert stats.std == pytest.approx(math.sqrt(8.25))  # population std
    assert (stats.min, stats.max, stats.n) == (1.0, 10.0, 10)


def test_stats_with_an_outlier() -> None:
    stats = LatencyStats.from_samples([40.0, 10.0, 1000.0, 30.0, 20.0])
    assert stats.p50 == 30.0
    assert stats.p95 == pytest.approx(40 + 0.8 * 960)  # rank 3.8
    assert stats.p99 == pytest.approx(40 + 0.96 * 960)  # rank 3.96
    assert stats.mean == pytest.approx(220.0)
    assert stats.to_dict()["n"] == 5


def test_stats_of_one_sample() -> None:
    stats = LatencyStats.from_samples([3.25])
    assert (stats.p50, stats.p95, stats.p99, stats.std) == (3.25, 3.25, 3.25, 0.0)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, -0.5], [float("inf")]])
def test_stats_reject_bad_samples(bad: list[float]) -> None:
    with pytest.raises(InvalidSpecError):
        LatencyStats.from_samples(bad)


class _RecordingPredictor(Predictor[np.ndarray[Any, Any]]):
    """Our own interface, implemented without a model, to see what the loop feeds it."""

    backend = "recording"
    device = "cpu"
    resolution = 8
    threshold = 0.0
    max_detections = 1

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.pixels: list[bytes] = []

    @property
    def threads(self) -> int:
        return 3

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray[Any, Any]:
        self.seen += [image.size for image in images]
        self.pixels += [image.tobytes() for image in images]
        return np.zeros((len(images), 3, 8, 8), dtype=np.float32)

    def forward(self, batch: np.ndarray[Any, Any]) -> RawOutputs[np.ndarray[Any, Any]]:
        return RawOutputs(boxes=batch[:, 0, :1, :4], logits=batch[:, 0, :1, :2])

    def postprocess(
        self, raw: RawOutputs[np.ndarray[Any, Any]], sizes: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        empty = Detections(
            boxes_xyxy=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32),
            labels=np.zeros(0, np.int64),
        )
        return [empty for _ in sizes]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in [(20, 10), (30, 12), (40, 14)]
    ]


def test_loop_decodes_and_cycles_through_the_images() -> None:
    images = _images()
    predictor = _RecordingPredictor()
    report = measure_latency(predictor, images, warmup=1, runs=4, batch_size=2)
    # (1 + 4) runs x 2 images, cycling through the three images in order.
    assert predictor.seen == [images[i % 3].size for i in range(10)]
    # PNG is lossless: what the predictor got is exactly the original pixels.
    assert predictor.pixels[:3] == [image.tobytes() for image in images]
    assert report.runs == 4 and report.warmup == 1 and report.batch_size == 2
    assert len(report.samples_model_ms) == len(report.samples_e2e_ms) == 4
    assert report.threads == 3 and report.device == "cpu" and report.backend == "recording"
    assert report.images_per_s == pytest.approx(2 * 1000.0 / report.end_to_end.mean)


def test_jpeg_encoding_round_trips() -> None:
    data = encode_images(_images()[:1], "JPEG")[0]
    assert data[:2] == b"\xff\xd8"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"warmup": -1, "runs": 1}, "warmup"),
        ({"warmup": 0, "runs": 0}, "runs"),
        ({"warmup": 0, "runs": 1, "batch_size": 0}, "batch_size"),
        ({"warmup": 0, "runs": 1, "inter_run_sleep_ms": -1.0}, "inter_run_sleep_ms"),
    ],
)
def test_loop_rejects_bad_counts(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        measure_latency(_RecordingPredictor(), _images(), **kwargs)
    assert info.value.field == field
    with pytest.raises(InvalidSpecError):
        measure_latency(_RecordingPredictor(), [], warmup=0, runs=1)


def test_torch_predictor_latency(nano_checkpoint: Path, shapes_dataset: Path) -> None:
    predictor = TorchPredictor(nano_checkpoint, "nano", 128)
    with Image.open(shapes_dataset / "valid" / "000000.png") as image:
        images = [image.convert("RGB")]
    report = measure_latency(predictor, images, warmup=1, runs=5, inter_run_sleep_ms=1.0)
    assert len(report.samples_model_ms) == len(report.samples_e2e_ms) == 5
    for stats in (report.model_only, report.end_to_end):
        assert stats.n == 5
        assert 0 < stats.min <= stats.p50 <= stats.p95 <= stats.p99 <= stats.max
    # The forward pass is timed inside the same run as the end-to-end interval.
    assert all(m < e for m, e in zip(report.samples_model_ms, report.samples_e2e_ms, strict=True))
    assert report.threads == torch.get_num_threads()
    assert report.device == "cpu" and report.backend == "torch"
    metrics = report.to_metrics()
    assert metrics["latency_ms/p95"] == report.end_to_end.p95
    assert metrics["throughput/img_s"] == pytest.approx(1000.0 / report.end_to_end.mean)
