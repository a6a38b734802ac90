"""Pareto front and SLA pick on hand-made points."""

from __future__ import annotations

import math

from detrforge.detector.pareto import Point, best_by_ap, dominates, pareto_front, sla_pick


def _p(key: str, ap: float, p95: float, size: str = "nano", res: int = 128) -> Point:
    return Point(key=key, ap=ap, p95_ms=p95, model_size=size, resolution=res)


def _keys(points: list[Point]) -> list[str]:
    return [p.key for p in points]


def test_dominated_points_are_excluded() -> None:
    points = [
        _p("fast-bad", 0.10, 10.0),
        _p("mid", 0.30, 20.0),
        _p("slow-good", 0.50, 40.0),
        _p("dominated-by-mid", 0.25, 25.0),  # worse AP and slower than mid
        _p("dominated-same-speed", 0.20, 20.0),  # same p95 as mid, lower AP
        _p("dominated-same-ap", 0.30, 30.0),  # same AP as mid, slower
    ]
    assert _keys(pareto_front(points)) == ["fast-bad", "mid", "slow-good"]


def test_identical_points_are_both_kept() -> None:
    a, b = _p("a", 0.3, 20.0, "small"), _p("b", 0.3, 20.0, "nano")
    assert not dominates(a, b) and not dominates(b, a)
    # Both on the front, smaller model first on the tie.
    assert _keys(pareto_front([a, b, _p("c", 0.1, 30.0)])) == ["b", "a"]
    # Both off the front when something dominates them.
    assert _keys(pareto_front([a, b, _p("d", 0.4, 10.0)])) == ["d"]


def test_front_ignores_unmeasured_points_and_is_sorted_by_latency() -> None:
    points = [
        _p("slow", 0.5, 50.0),
        _p("no-p95", 0.9, math.nan),
        _p("no-ap", math.inf, 1.0),
        _p("fast", 0.2, 5.0),
    ]
    assert _keys(pareto_front(points)) == ["fast", "slow"]
    assert pareto_front([]) == []


def test_sla_pick_is_best_ap_within_the_sla() -> None:
    points = [_p("n", 0.20, 10.0), _p("s", 0.35, 19.0, "small"), _p("m", 0.50, 30.0, "medium")]
    pick = sla_pick(points, 20.0)
    assert pick.met and pick.point is not None and pick.point.key == "s"
    assert pick.to_dict()["pick"]["key"] == "s"
    # The SLA is inclusive.
    assert sla_pick(points, 30.0).point == points[2]


def test_sla_pick_ties_go_to_lower_p95_then_smaller_model() -> None:
    points = [
        _p("small-slow", 0.4, 15.0, "small"),
        _p("small-fast", 0.4, 12.0, "small"),
        _p("nano-fast", 0.4, 12.0, "nano"),
        _p("low", 0.1, 1.0),
    ]
    pick = sla_pick(points, 20.0)
    assert pick.point is not None and pick.point.key == "nano-fast"


def test_no_trial_meets_the_sla_is_a_clear_answer() -> None:
    points = [_p("n", 0.2, 40.0), _p("s", 0.3, 55.0, "small")]
    pick = sla_pick(points, 10.0)
    assert pick.point is None and not pick.met
    assert pick.reason.startswith("none meets the SLA")
    assert "40.0 ms" in pick.reason
    assert pick.to_dict() == {"sla_ms": 10.0, "met": False, "pick": None, "reason": pick.reason}


def test_no_sla_means_best_by_ap_and_nothing_measured_means_no_pick() -> None:
    points = [_p("n", 0.2, 5.0), _p("s", 0.3, 55.0, "small")]
    assert sla_pick(points, None).point == points[1]
    assert best_by_ap(points) == points[1]
    empty = sla_pick([_p("x", 0.5, math.nan)], 100.0)
    assert empty.point is None and "measured p95" in empty.reason
    assert best_by_ap([]) is None
