"""A paired benchmark's summary with chosen figures, shaped like ``jobs.benchmark``'s, for the
tests whose evidence runners answer with figures instead of running jobs."""

from __future__ import annotations

from typing import Any


def paired_summary(
    candidate_p95: float,
    baseline_p95: float,
    *,
    spread: float = 0.05,
    n: int = 292,
    cv: float = 0.04,
) -> dict[str, Any]:
    """Arms with these p95s; the p95 ratio's interval is the ratio times ``1 -/+ spread``."""
    ratio = candidate_p95 / baseline_p95

    def arm(p95: float) -> dict[str, Any]:
        return {"p50_ms": p95 * 0.9, "p95_ms": p95, "p99_ms": p95 * 1.05, "cv": cv, "n": n}

    def interval(percentile: float) -> dict[str, float]:
        return {
            "percentile": percentile,
            "ratio": ratio,
            "low": ratio * (1 - spread),
            "high": ratio * (1 + spread),
            "confidence": 0.95,
        }

    return {
        "metric": "model_ms",
        "arms": {"candidate": arm(candidate_p95), "baseline": arm(baseline_p95)},
        "ratio": {f"p{q}": interval(q) for q in (50, 95, 99)},
        "block": 4,
        "pairs": n // 4,
        "rounds": [{"samples_per_arm": n}],
    }
