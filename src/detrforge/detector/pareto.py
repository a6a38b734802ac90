"""Accuracy/latency trade-offs: the Pareto front of (AP, p95) and the SLA pick.

Pure functions over :class:`Point` values, no Ray and no MLflow, so the rules are unit-tested.

Rules:

- A point *dominates* another when its AP is >= and its p95 is <=, with at least one strictly
  better. The front is every point no other point dominates.
- Ties: points with identical (AP, p95) do not dominate each other, so all of them are on the
  front (or all are off it). The front is sorted by p95 ascending, then AP descending, then
  model size (smaller first), then ``key``, so the order is deterministic.
- Points without a finite AP or p95 (a trial that failed or was never measured) are ignored.
- :func:`sla_pick` gives the best AP among points whose p95 <= the SLA; ties go to the lower
  p95, then the smaller model, then the lower resolution, then ``key``. When no point meets the
  SLA it returns a :class:`SlaPick` with ``point=None`` and a reason, never an arbitrary point.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Point", "SlaPick", "best_by_ap", "dominates", "pareto_front", "sla_pick"]

_SIZE_ORDER = {"nano": 0, "small": 1, "medium": 2, "large": 3}


@dataclass(frozen=True)
class Point:
    """One trial's outcome: validation AP (higher is better) and p95 latency in ms (lower)."""

    key: str
    ap: float
    p95_ms: float
    model_size: str = ""
    resolution: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def valid(self) -> bool:
        """Whether both figures are finite numbers (a measured, finished trial)."""
        return _finite(self.ap) and _finite(self.p95_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "ap": self.ap,
            "p95_ms": self.p95_ms,
            "model_size": self.model_size,
            "resolution": self.resolution,
            **self.extra,
        }


@dataclass(frozen=True)
class SlaPick:
    """The recommended point under a latency SLA, or ``point=None`` with the reason."""

    sla_ms: float | None
    point: Point | None
    reason: str

    @property
    def met(self) -> bool:
        return self.point is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "sla_ms": self.sla_ms,
            "met": self.met,
            "pick": self.point.to_dict() if self.point is not None else None,
            "reason": self.reason,
        }


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _size_rank(point: Point) -> int:
    return _SIZE_ORDER.get(point.model_size, len(_SIZE_ORDER))


def dominates(a: Point, b: Point) -> bool:
    """Whether ``a`` is at least as good as ``b`` on both axes and strictly better on one."""
    return a.ap >= b.ap and a.p95_ms <= b.p95_ms and (a.ap > b.ap or a.p95_ms < b.p95_ms)


def _front_order(point: Point) -> tuple[float, float, int, int, str]:
    return (point.p95_ms, -point.ap, _size_rank(point), point.resolution, point.key)


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """The non-dominated points, fastest first; identical points are all kept (module doc)."""
    valid = [p for p in points if p.valid]
    front = [p for p in valid if not any(dominates(q, p) for q in valid)]
    return sorted(front, key=_front_order)


def best_by_ap(points: Iterable[Point]) -> Point | None:
    """The highest-AP point (ties: lower p95, smaller model, lower resolution, key), or None."""
    valid = [p for p in points if p.valid]
    if not valid:
        return None
    return min(valid, key=lambda p: (-p.ap, p.p95_ms, _size_rank(p), p.resolution, p.key))


def sla_pick(points: Sequence[Point], sla_ms: float | None) -> SlaPick:
    """The best-AP point whose p95 meets ``sla_ms``; ``point=None`` when none does.

    Without an SLA the pick is the best point by AP.
    """
    valid = [p for p in points if p.valid]
    if not valid:
        return SlaPick(sla_ms, None, "no trial has both a validation AP and a measured p95")
    if sla_ms is None:
        best = best_by_ap(valid)
        return SlaPick(None, best, "no latency SLA given: the best trial by AP")
    meeting = [p for p in valid if p.p95_ms <= sla_ms]
    if not meeting:
        fastest = min(p.p95_ms for p in valid)
        return SlaPick(
            sla_ms,
            None,
            f"none meets the SLA: no trial has p95 <= {sla_ms:g} ms (the fastest measured "
            f"{fastest:.1f} ms); relax the SLA, search smaller sizes or resolutions, or use "
            "faster hardware",
        )
    best = best_by_ap(meeting)
    assert best is not None
    return SlaPick(
        sla_ms,
        best,
        f"best AP among the {len(meeting)} of {len(valid)} trials with p95 <= {sla_ms:g} ms",
    )
