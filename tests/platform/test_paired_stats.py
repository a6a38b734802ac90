"""The statistics a latency ratio gate decides with, on hand-made samples: the sample count for a
tail percentile, the bootstrap interval of a p95 ratio against a plain reference bootstrap, and
the pass / fail / inconclusive verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detrforge.platform.paired_stats import (
    coefficient_of_variation,
    ratio_interval,
    ratio_verdict,
    samples_for_percentile,
)

BLOCK = 4


def test_sample_counts_follow_the_binomial_formula_mlperf_uses() -> None:
    # MLPerf Inference's loadgen: 99% confidence, margin (1 - p) / 20, rounded up to a multiple
    # of 2^13: its published minimum query counts are 24,576 for p90 and 270,336 for p99.
    for percentile, published in ((90, 24_576), (99, 270_336)):
        n = samples_for_percentile(percentile, 0.99, margin=(1 - percentile / 100) / 20)
        assert math.ceil(n / 8192) * 8192 == published
    # The gate's default: p95 within [p92.5, p97.5] with 95% confidence.
    assert samples_for_percentile(95) == 292
    assert samples_for_percentile(95, 0.99) == 505
    assert samples_for_percentile(95) > 20 * 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"percentile": 100}, "percentile must be in"),
        ({"percentile": 95, "confidence": 1.0}, "confidence must be in"),
    ],
)
def test_sample_counts_refuse_impossible_asks(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        samples_for_percentile(**kwargs)


def _arm(rng: np.random.Generator, pairs: int, scale: float, sigma: float = 0.15) -> np.ndarray:
    """Log-normal latencies (a right tail like real ones), shaped ``(pairs, BLOCK)``."""
    return scale * rng.lognormal(0.0, sigma, size=(pairs, BLOCK))


def _reference_interval(
    a: np.ndarray, b: np.ndarray, *, percentile: float, confidence: float, seed: int
) -> tuple[float, float]:
    """A plain loop: draw block pairs with replacement, take the ratio of the percentiles."""
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(4000):
        rows = rng.integers(0, a.shape[0], size=a.shape[0])
        ratios.append(
            np.percentile(a[rows].ravel(), percentile) / np.percentile(b[rows].ravel(), percentile)
        )
    tail = (1 - confidence) / 2
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))


def test_equal_arms_pass_and_the_interval_matches_a_reference_bootstrap() -> None:
    rng = np.random.default_rng(1)
    a, b = _arm(rng, 73, 50.0), _arm(rng, 73, 50.0)
    interval = ratio_interval(a, b, percentile=95, seed=3)

    assert interval.low < 1.0 < interval.high
    assert interval.high - interval.low < 0.2
    assert ratio_verdict(interval.low, interval.high, 1.2) == "pass"
    low, high = _reference_interval(a, b, percentile=95, confidence=0.95, seed=11)
    # Two independent bootstraps of the same data: their bounds agree to Monte Carlo error.
    assert interval.low == pytest.approx(low, abs=0.015)
    assert interval.high == pytest.approx(high, abs=0.015)
    assert interval.ratio == pytest.approx(np.percentile(a, 95) / np.percentile(b, 95))


def test_a_twice_slower_candidate_fails() -> None:
    rng = np.random.default_rng(2)
    a, b = _arm(rng, 73, 100.0), _arm(rng, 73, 50.0)
    interval = ratio_interval(a, b, percentile=95)
    assert 1.7 < interval.low < interval.ratio < interval.high < 2.4
    assert ratio_verdict(interval.low, interval.high, 1.2) == "fail"


def test_a_noisy_small_sample_straddling_the_limit_is_inconclusive() -> None:
    rng = np.random.default_rng(3)
    a, b = _arm(rng, 5, 55.0, sigma=0.4), _arm(rng, 5, 50.0, sigma=0.4)
    interval = ratio_interval(a, b, percentile=95)
    assert interval.low < 1.2 < interval.high
    assert ratio_verdict(interval.low, interval.high, 1.2) == "inconclusive"
    # More samples of the same two arms narrow the interval to a decision.
    many = ratio_interval(
        _arm(rng, 400, 55.0, sigma=0.4), _arm(rng, 400, 50.0, sigma=0.4), percentile=95
    )
    assert many.high - many.low < interval.high - interval.low
    assert ratio_verdict(many.low, many.high, 1.2) == "pass"


def test_a_load_burst_shared_by_both_arms_of_a_pair_cancels_out() -> None:
    """The point of pairing: a slow spell hits both arms of the pairs measured then."""
    rng = np.random.default_rng(4)
    load = np.where(np.arange(73) % 10 < 3, 2.5, 1.0)[:, None]  # 30% of pairs run under load
    a, b = _arm(rng, 73, 50.0, 0.05) * load, _arm(rng, 73, 50.0, 0.05) * load
    interval = ratio_interval(a, b, percentile=95)
    assert ratio_verdict(interval.low, interval.high, 1.2) == "pass"
    assert interval.low < 1.0 < interval.high


@pytest.mark.parametrize(
    ("low", "high", "limit", "verdict"),
    [
        (0.9, 1.2, 1.2, "pass"),  # the upper bound on the limit is within it
        (1.21, 1.5, 1.2, "fail"),
        (1.2, 1.5, 1.2, "inconclusive"),  # the lower bound on the limit: not above it
        (float("nan"), 1.1, 1.2, "fail"),
    ],
)
def test_the_verdict_at_the_edges(low: float, high: float, limit: float, verdict: str) -> None:
    assert ratio_verdict(low, high, limit) == verdict


def test_interval_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="one shape"):
        ratio_interval(np.ones((3, 4)), np.ones((2, 4)), percentile=95)
    with pytest.raises(ValueError, match="baseline ones > 0"):
        ratio_interval(np.ones((3, 4)), np.zeros((3, 4)), percentile=95)
    assert coefficient_of_variation([10.0, 10.0]) == 0.0
    assert coefficient_of_variation([9.0, 11.0]) == pytest.approx(0.1)
