"""A paired latency A/B of two predictors in one process: the measurement a ratio gate reads.

Both predictors are loaded in the same process, with the same threads, and timed on the same
encoded images in the same order. After a warm-up of each, the timed runs come in *block pairs*:
``block`` runs of one arm and ``block`` runs of the other, the order of the two drawn at random
for each pair (AB or BA, from ``seed``). Whatever else the machine does at a moment (a
neighbour's job, a thermal dip) falls on both arms of the pair measured then, and the bootstrap of
:mod:`detrforge.platform.paired_stats` resamples whole pairs.

With a ``max_ratio``, the p95 ratio's interval decides a verdict after each round; an
inconclusive round is followed by another round of as many samples (pooled with the earlier
ones), up to ``max_rounds``. The figures compared are the forward pass alone (``model_ms``, the
history's ``p*_ms``): decode and pre/postprocessing are timed too and reported, not gated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from detrforge.detector.latency import (
    LatencyReport,
    check_counts,
    encode_images,
    make_report,
    time_batch,
)
from detrforge.detector.predictor import Predictor
from detrforge.platform.errors import InvalidSpecError
from detrforge.platform.paired_stats import (
    DEFAULT_CONFIDENCE,
    RatioInterval,
    Verdict,
    coefficient_of_variation,
    ratio_interval,
    ratio_verdict,
)

__all__ = ["DEFAULT_BLOCK", "PairedReport", "measure_paired"]

DEFAULT_BLOCK = 4


@dataclass(frozen=True)
class PairedReport:
    """Both arms, the p50/p95/p99 ratios with their intervals, and how the rounds went."""

    candidate: LatencyReport
    baseline: LatencyReport
    block: int
    seed: int
    orders: list[str]
    intervals: dict[str, RatioInterval]
    rounds: list[dict[str, Any]]
    max_ratio: float | None
    verdict: Verdict | None

    @property
    def p95(self) -> RatioInterval:
        return self.intervals["p95"]

    def summary(self) -> dict[str, Any]:
        """Everything but the raw samples: what a gate result and the history show."""
        return {
            "metric": "model_ms",
            "arms": {
                "candidate": _arm(self.candidate),
                "baseline": _arm(self.baseline),
            },
            "ratio": {name: interval.to_dict() for name, interval in self.intervals.items()},
            "block": self.block,
            "seed": self.seed,
            "pairs": len(self.orders),
            "rounds": self.rounds,
            "max_ratio": self.max_ratio,
            "verdict": self.verdict,
        }

    def samples(self) -> dict[str, Any]:
        """The raw samples of both arms, in measurement order, and each pair's order."""
        return {
            "orders": self.orders,
            "candidate": {
                "model_ms": self.candidate.samples_model_ms,
                "e2e_ms": self.candidate.samples_e2e_ms,
            },
            "baseline": {
                "model_ms": self.baseline.samples_model_ms,
                "e2e_ms": self.baseline.samples_e2e_ms,
            },
        }


def _arm(report: LatencyReport) -> dict[str, Any]:
    model, e2e = report.model_only, report.end_to_end
    return {
        "p50_ms": model.p50,
        "p95_ms": model.p95,
        "p99_ms": model.p99,
        "mean_ms": model.mean,
        "cv": coefficient_of_variation(report.samples_model_ms),
        "e2e_p50_ms": e2e.p50,
        "e2e_p95_ms": e2e.p95,
        "e2e_p99_ms": e2e.p99,
        "n": model.n,
    }


def measure_paired(
    candidate: Predictor[Any],
    baseline: Predictor[Any],
    images: Sequence[Image.Image],
    *,
    warmup: int,
    runs: int,
    block: int = DEFAULT_BLOCK,
    seed: int = 0,
    max_ratio: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    max_rounds: int = 1,
) -> PairedReport:
    """Time both predictors in block pairs: ``runs`` samples per arm per round.

    Raises:
        InvalidSpecError: no images, or a count out of range.
    """
    if not images:
        raise InvalidSpecError("a paired benchmark needs at least one image", field="images")
    check_counts(warmup=warmup, runs=runs, batch_size=1)
    for name, value in (("block", block), ("max_rounds", max_rounds)):
        if value < 1:
            raise InvalidSpecError(f"{name} must be >= 1, got {value}", field=name)
    encoded = encode_images(images)
    arms = {"A": candidate, "B": baseline}
    samples: dict[str, tuple[list[float], list[float]]] = {"A": ([], []), "B": ([], [])}
    masks: dict[str, list[float]] = {"A": [], "B": []}
    for run in range(warmup):  # untimed; alternating, so neither arm starts cold
        for predictor in arms.values():
            time_batch(predictor, encoded, run, 1)
    rng = np.random.default_rng(seed)
    orders: list[str] = []
    rounds: list[dict[str, Any]] = []
    verdict: Verdict | None = None
    pairs_per_round = math.ceil(runs / block)
    while True:
        for _ in range(pairs_per_round):
            order = "AB" if rng.random() < 0.5 else "BA"
            first_image = len(orders) * block  # both arms of a pair time the same images
            orders.append(order)
            for arm in order:
                model_ms, e2e_ms = samples[arm]
                for j in range(block):
                    times = time_batch(arms[arm], encoded, first_image + j, 1)
                    model_ms.append(times.model)
                    e2e_ms.append(times.e2e)
                    if times.masks is not None:
                        masks[arm].append(times.masks)
        intervals = _intervals(samples, block, confidence, seed)
        p95 = intervals["p95"]
        verdict = ratio_verdict(p95.low, p95.high, max_ratio) if max_ratio is not None else None
        rounds.append(
            {
                "samples_per_arm": len(samples["A"][0]),
                "p95_ratio": p95.to_dict(),
                "verdict": verdict,
            }
        )
        if verdict != "inconclusive" or len(rounds) >= max_rounds:
            break
    n = len(samples["A"][0])
    return PairedReport(
        candidate=make_report(
            candidate, *samples["A"], mask_ms=masks["A"], batch_size=1, warmup=warmup, runs=n
        ),
        baseline=make_report(
            baseline, *samples["B"], mask_ms=masks["B"], batch_size=1, warmup=warmup, runs=n
        ),
        block=block,
        seed=seed,
        orders=orders,
        intervals=intervals,
        rounds=rounds,
        max_ratio=max_ratio,
        verdict=verdict,
    )


def _intervals(
    samples: dict[str, tuple[list[float], list[float]]],
    block: int,
    confidence: float,
    seed: int,
) -> dict[str, RatioInterval]:
    a = np.asarray(samples["A"][0]).reshape(-1, block)
    b = np.asarray(samples["B"][0]).reshape(-1, block)
    return {
        f"p{q}": ratio_interval(a, b, percentile=q, confidence=confidence, seed=seed)
        for q in (50, 95, 99)
    }
