"""Latency of a predictor on this machine: model-only and end-to-end, p50/p95/p99 in milliseconds.

One timed run processes one batch and records two intervals on ``time.perf_counter_ns``:

- end-to-end: decode the encoded image bytes (PNG by default) from memory with PIL, preprocess,
  forward, postprocess to host numpy detections;
- model-only: the forward pass alone, inside the same run;
- masks (segmentation models only): decoding the kept detections' masks, i.e. upsampling each
  mask to the image size and thresholding it, after the box postprocess, inside the same run.

On CUDA the predictor synchronizes the device before each clock read, so asynchronous kernels are
charged to the interval that queued them (this also stops preprocessing from overlapping the
forward pass, which costs end-to-end a little and makes the split honest). Warm-up runs execute
the same path and are discarded.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from detrforge.detector.predictor import Predictor
from detrforge.platform.errors import InvalidSpecError

__all__ = [
    "BatchTimes",
    "LatencyReport",
    "LatencyStats",
    "check_counts",
    "encode_images",
    "make_report",
    "measure_latency",
    "time_batch",
]


@dataclass(frozen=True)
class LatencyStats:
    """Summary of latency samples in milliseconds.

    Percentiles use numpy's default ``linear`` method (type 7 of Hyndman and Fan: the value at
    rank ``(n - 1) * q`` interpolated between neighbours), so p99 of fewer than 100 samples lies
    between the two largest. ``std`` is the population standard deviation (ddof=0).
    """

    p50: float
    p95: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    n: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        """Stats of ``samples_ms``.

        Raises:
            InvalidSpecError: no samples, or a sample that is not a finite number >= 0.
        """
        values = np.asarray(list(samples_ms), dtype=np.float64)
        if values.size == 0:
            raise InvalidSpecError("no latency samples to summarise", field="samples")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise InvalidSpecError(
                "latency samples must be finite and >= 0 milliseconds", field="samples"
            )
        p50, p95, p99 = np.percentile(values, [50, 95, 99], method="linear")
        return cls(
            p50=float(p50),
            p95=float(p95),
            p99=float(p99),
            mean=float(values.mean()),
            std=float(values.std()),
            min=float(values.min()),
            max=float(values.max()),
            n=int(values.size),
        )

    def to_dict(self) -> dict[str, float | int]:
        """The fields as a plain dict."""
        return asdict(self)


@dataclass(frozen=True)
class LatencyReport:
    """What :func:`measure_latency` measured, with the raw samples kept for history.

    ``masks`` (and ``samples_mask_ms``): a segmentation model's mask decoding, part of end to end
    and not of model-only; None for a detection model.
    """

    model_only: LatencyStats
    end_to_end: LatencyStats
    images_per_s: float
    samples_model_ms: list[float]
    samples_e2e_ms: list[float]
    threads: int
    device: str
    backend: str
    batch_size: int
    warmup: int
    runs: int
    masks: LatencyStats | None = None
    samples_mask_ms: list[float] | None = None

    def to_metrics(self) -> dict[str, float]:
        """End-to-end figures under the project's metric names (``latency_ms/p95`` ...), and
        mask decoding's under ``mask_ms/`` when there is a mask head."""
        metrics = {
            "latency_ms/p50": self.end_to_end.p50,
            "latency_ms/p95": self.end_to_end.p95,
            "latency_ms/p99": self.end_to_end.p99,
            "throughput/img_s": self.images_per_s,
        }
        if self.masks is not None:
            metrics.update({f"mask_ms/p{q}": getattr(self.masks, f"p{q}") for q in (50, 95, 99)})
        return metrics


def encode_images(images: Sequence[Image.Image], image_format: str = "PNG") -> list[bytes]:
    """Each image as encoded file bytes (``PNG`` is lossless; ``JPEG`` at quality 95)."""
    out = []
    for image in images:
        buffer = io.BytesIO()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if image_format.upper() in ("JPEG", "JPG"):
            rgb.save(buffer, format="JPEG", quality=95)
        else:
            rgb.save(buffer, format=image_format)
        out.append(buffer.getvalue())
    return out


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    return image.convert("RGB")  # forces the decode; a lazy open would not do the work


def measure_latency(
    predictor: Predictor[Any],
    images: Sequence[Image.Image],
    *,
    warmup: int,
    runs: int,
    batch_size: int = 1,
    inter_run_sleep_ms: float = 0.0,
    image_format: str = "PNG",
) -> LatencyReport:
    """Time ``runs`` batches of ``batch_size`` images after ``warmup`` untimed ones.

    Batches cycle through ``images`` in order. ``images_per_s`` is ``batch_size`` over the mean
    end-to-end time: one stream, no pipelining. ``inter_run_sleep_ms`` pauses between runs
    (untimed), e.g. to keep a thermally limited device from throttling.

    Raises:
        InvalidSpecError: no images, or counts out of range.
    """
    if not images:
        raise InvalidSpecError("measure_latency needs at least one image", field="images")
    check_counts(warmup=warmup, runs=runs, batch_size=batch_size)
    if not math.isfinite(inter_run_sleep_ms) or inter_run_sleep_ms < 0:
        raise InvalidSpecError(
            f"inter_run_sleep_ms must be >= 0, got {inter_run_sleep_ms}", field="inter_run_sleep_ms"
        )
    encoded = encode_images(images, image_format)
    model_ms: list[float] = []
    e2e_ms: list[float] = []
    mask_ms: list[float] = []
    for run in range(warmup + runs):
        times = time_batch(predictor, encoded, run * batch_size, batch_size)
        if run >= warmup:
            model_ms.append(times.model)
            e2e_ms.append(times.e2e)
            if times.masks is not None:
                mask_ms.append(times.masks)
        if inter_run_sleep_ms:
            time.sleep(inter_run_sleep_ms / 1000.0)
    return make_report(
        predictor,
        model_ms,
        e2e_ms,
        mask_ms=mask_ms or None,
        batch_size=batch_size,
        warmup=warmup,
        runs=runs,
    )


def check_counts(*, warmup: int, runs: int, batch_size: int) -> None:
    """Raise ``InvalidSpecError`` naming the count that is out of range."""
    for name, value, minimum in (
        ("warmup", warmup, 0),
        ("runs", runs, 1),
        ("batch_size", batch_size, 1),
    ):
        if value < minimum:
            raise InvalidSpecError(f"{name} must be >= {minimum}, got {value}", field=name)


class BatchTimes(NamedTuple):
    """One timed run's intervals in milliseconds; ``masks`` is None without a mask head."""

    model: float
    e2e: float
    masks: float | None = None


def time_batch(
    predictor: Predictor[Any], encoded: Sequence[bytes], start: int, batch_size: int
) -> BatchTimes:
    """One timed run of ``batch_size`` images from ``encoded[start:]`` (cycling): its model-only,
    end-to-end and (segmentation) mask-decoding milliseconds."""
    clock = time.perf_counter_ns
    batch_bytes = [encoded[(start + j) % len(encoded)] for j in range(batch_size)]
    predictor.synchronize()
    t0 = clock()
    decoded = [_decode(data) for data in batch_bytes]
    batch = predictor.preprocess(decoded)
    predictor.synchronize()
    t1 = clock()
    raw = predictor.forward(batch)
    predictor.synchronize()
    t2 = clock()
    sizes = [(im.height, im.width) for im in decoded]
    detections = predictor.postprocess(raw, sizes)
    predictor.synchronize()
    t3 = clock()
    masks = None
    if predictor.has_masks:
        detections = predictor.decode_masks(raw, detections, sizes)
        predictor.synchronize()
        t4 = clock()
        masks = (t4 - t3) / 1e6
        t3 = t4
    if len(detections) != batch_size:
        raise RuntimeError(f"{type(predictor).__name__} returned {len(detections)} results")
    return BatchTimes(model=(t2 - t1) / 1e6, e2e=(t3 - t0) / 1e6, masks=masks)


def make_report(
    predictor: Predictor[Any],
    model_ms: list[float],
    e2e_ms: list[float],
    *,
    batch_size: int,
    warmup: int,
    runs: int,
    mask_ms: list[float] | None = None,
) -> LatencyReport:
    """The report of one predictor's timed runs (``mask_ms``: its mask decoding, if any)."""
    end_to_end = LatencyStats.from_samples(e2e_ms)
    return LatencyReport(
        masks=LatencyStats.from_samples(mask_ms) if mask_ms else None,
        samples_mask_ms=list(mask_ms) if mask_ms else None,
        model_only=LatencyStats.from_samples(model_ms),
        end_to_end=end_to_end,
        images_per_s=batch_size * 1000.0 / end_to_end.mean if end_to_end.mean > 0 else math.inf,
        samples_model_ms=model_ms,
        samples_e2e_ms=e2e_ms,
        threads=predictor.threads,
        device=predictor.device,
        backend=predictor.backend,
        batch_size=batch_size,
        warmup=warmup,
        runs=runs,
    )
