"""Statistics of a paired latency A/B: how many samples a tail percentile needs, the bootstrap
confidence interval of a percentile ratio, and the three-way verdict a ratio gate reads.

The samples come in *block pairs*: a block of timed runs of one arm, then (or before, in random
order) a block of the other, close in time. A slow spell on the machine then hits both arms of a
pair alike, and the bootstrap resamples whole pairs rather than single runs, so an interval keeps
the correlation that load drift puts into neighbouring runs (a run-level bootstrap would treat a
burst of slow runs as independent luck and come out too narrow).

Pure numpy on plain arrays: the benchmark job computes these on the target, the gate check reads
the stored figures with :func:`ratio_verdict`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "DEFAULT_CONFIDENCE",
    "RatioInterval",
    "Verdict",
    "coefficient_of_variation",
    "ratio_interval",
    "ratio_verdict",
    "samples_for_percentile",
]

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000

Verdict = Literal["pass", "fail", "inconclusive"]


def samples_for_percentile(
    percentile: float, confidence: float = DEFAULT_CONFIDENCE, margin: float | None = None
) -> int:
    """How many samples estimate the ``percentile`` (e.g. 95) to within ``margin`` in rank.

    The normal approximation to the binomial count of samples below the true percentile ``p``:
    ``n = z^2 p (1 - p) / margin^2`` with ``z`` the two-sided normal quantile of ``confidence``.
    MLPerf Inference's loadgen sizes its tail-latency runs with the same formula (99% confidence,
    margin ``(1 - p) / 20``, hence its 270k queries for p99). A promotion gate cannot spend that,
    so the default margin is half the tail, ``(1 - p) / 2``: with 95% confidence the sample p95
    lies between the true p92.5 and p97.5. For p95 at 95% that is 292 samples per arm (20 runs
    made the second-largest sample the p95).
    """
    p = percentile / 100.0
    if not 0.0 < p < 1.0:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    margin = (1.0 - p) / 2.0 if margin is None else margin
    z = _normal_quantile(0.5 + confidence / 2.0)
    return math.ceil(z * z * p * (1.0 - p) / (margin * margin) - 1e-9)


def _normal_quantile(q: float) -> float:
    # Bisection on the normal CDF (math.erfc): exact to float precision, and no scipy needed.
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class RatioInterval:
    """``candidate / baseline`` of one percentile, with its bootstrap interval."""

    percentile: float
    ratio: float
    low: float
    high: float
    confidence: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def describe(self) -> str:
        """``1.12 [0.91, 1.41]``."""
        return f"{self.ratio:.2f} [{self.low:.2f}, {self.high:.2f}]"


def ratio_interval(
    candidate: ArrayLike,
    baseline: ArrayLike,
    *,
    percentile: float,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> RatioInterval:
    """The ratio of the arms' ``percentile`` and its percentile-bootstrap interval.

    ``candidate`` and ``baseline`` are ``(pairs, block)`` arrays: row ``i`` of each was measured
    in block pair ``i``. Each resample draws ``pairs`` rows with replacement (the same rows for
    both arms) and takes the ratio of the percentiles of the drawn samples.
    """
    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"both arms must be (pairs, block) arrays of one shape: {a.shape}, {b.shape}"
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))) or b.min() <= 0 or a.min() < 0:
        raise ValueError("latency samples must be finite, baseline ones > 0")
    pairs = a.shape[0]
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, pairs, size=(resamples, pairs))
    a_q = np.percentile(a[rows].reshape(resamples, -1), percentile, axis=1)
    b_q = np.percentile(b[rows].reshape(resamples, -1), percentile, axis=1)
    ratios = a_q / b_q
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    point = float(np.percentile(a, percentile) / np.percentile(b, percentile))
    return RatioInterval(
        percentile=float(percentile),
        ratio=point,
        low=float(low),
        high=float(high),
        confidence=float(confidence),
    )


def ratio_verdict(low: float, high: float, limit: float) -> Verdict:
    """``pass`` when the whole interval is within ``limit``, ``fail`` when the whole interval is
    above it, ``inconclusive`` when it straddles the limit (NaN anywhere fails)."""
    if not all(math.isfinite(x) for x in (low, high, limit)):
        return "fail"
    if high <= limit:
        return "pass"
    if low > limit:
        return "fail"
    return "inconclusive"


def coefficient_of_variation(samples: ArrayLike) -> float:
    """Standard deviation over mean of the samples (0 for a constant series)."""
    values = np.asarray(samples, dtype=np.float64).ravel()
    mean = float(values.mean())
    return float(values.std() / mean) if mean > 0 else 0.0
