"""Gate policies and the gate checks a promotion must pass.

A policy pins an evaluation set and names the checks; ``check_gates`` turns measured evidence
(candidate and, where there is one, the current production version) into one ``GateResult`` per
check, each saying what was compared and by how much it passed or failed. Pure functions: the
promotion service gathers the evidence, the registry store records the verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from detrforge.platform.limits import Name, Uri
from detrforge.platform.paired_stats import (
    DEFAULT_CONFIDENCE,
    Verdict,
    ratio_verdict,
    samples_for_percentile,
)
from detrforge.registry.entities import GateResult

__all__ = [
    "AP_METRIC",
    "MASK_AP_METRIC",
    "P95_METRIC",
    "Evidence",
    "EvalSet",
    "GatePolicy",
    "TargetGate",
    "check_gates",
]

AP_METRIC = "bbox/AP"
MASK_AP_METRIC = "segm/AP"
P95_METRIC = "latency_ms/p95"


class _Frozen(BaseModel):
    # Strict, like every request model: a policy is set through the API.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class EvalSet(_Frozen):
    """The pinned evaluation set every candidate and baseline is scored on."""

    dataset: Uri = Field(description="Local path or s3:// prefix (COCO layout).")
    split: Literal["train", "valid", "test"] = "valid"
    backend: Literal["torch", "onnxruntime"] = "torch"
    fingerprint: StrictStr | None = Field(
        max_length=128,
        default=None,
        description="Filled in when the policy is set; a changed set is refused.",
    )


class TargetGate(_Frozen):
    """Latency checks on one hardware target: a ratio to production and/or an absolute SLA."""

    target: Name
    max_p95_ratio: float | None = Field(default=None, gt=0)
    p95_sla_ms: float | None = Field(default=None, gt=0)
    variant: Name | None = Field(
        default=None,
        description="The inference variant that ships on this target (e.g. onnx-int8; see "
        "`detrforge optimize`): the latency and AP gates measure that artifact, and "
        "GET /models/{name}/aliases/production?target= answers with it. Default: the "
        "checkpoint itself, on the target's backend.",
    )

    @model_validator(mode="after")
    def _one_check(self) -> TargetGate:
        if self.max_p95_ratio is None and self.p95_sla_ms is None:
            raise ValueError(
                f"target {self.target!r} has no check: set max_p95_ratio and/or p95_sla_ms"
            )
        return self


class GatePolicy(_Frozen):
    """What a version must show before it may enter staging or production."""

    eval: EvalSet | None = None
    ap_floor: float | None = Field(default=None, ge=0, le=1)
    max_ap_drop: float | None = Field(default=None, ge=0, le=1)
    mask_ap_floor: float | None = Field(
        default=None, ge=0, le=1, description="Segmentation models: the lowest mask AP (segm/AP)."
    )
    max_mask_ap_drop: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Segmentation models: the largest mask AP drop vs production.",
    )
    targets: list[TargetGate] = Field(default_factory=list, max_length=64)
    benchmark_runs: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Timed runs per arm and round; default: what a p95 needs at "
        "latency_confidence (292 at 95%, see platform/paired_stats.py).",
    )
    benchmark_warmup: int = Field(default=5, ge=0, le=10_000)
    latency_confidence: float = Field(
        default=DEFAULT_CONFIDENCE,
        ge=0.5,
        le=0.999,
        description="Confidence of the p95 ratio's bootstrap interval.",
    )
    latency_max_rounds: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Rounds of benchmark_runs a ratio gate may take before an interval that "
        "still straddles the limit fails the promotion as inconclusive.",
    )

    @model_validator(mode="after")
    def _eval_set_for_ap(self) -> GatePolicy:
        if (self.ap_floor is not None or self.max_ap_drop is not None) and self.eval is None:
            raise ValueError("ap_floor and max_ap_drop need an eval set: set eval.dataset")
        if self.needs_mask_ap and self.eval is None:
            raise ValueError(
                "mask_ap_floor and max_mask_ap_drop need an eval set with masks: set eval.dataset"
            )
        names = [gate.target for gate in self.targets]
        if len(names) != len(set(names)):
            raise ValueError("targets: each hardware target may appear once")
        return self

    @property
    def needs_ap(self) -> bool:
        """Whether any gate reads an evaluation (box or mask AP)."""
        return self.ap_floor is not None or self.max_ap_drop is not None or self.needs_mask_ap

    @property
    def needs_mask_ap(self) -> bool:
        return self.mask_ap_floor is not None or self.max_mask_ap_drop is not None

    @property
    def compares_ap(self) -> bool:
        """Whether a gate compares AP with production's (the baseline is evaluated too)."""
        return self.max_ap_drop is not None or self.max_mask_ap_drop is not None

    @property
    def is_empty(self) -> bool:
        return not self.needs_ap and not self.targets

    @property
    def runs_per_round(self) -> int:
        """Timed runs per arm and round: ``benchmark_runs``, or what p95 needs."""
        if self.benchmark_runs is not None:
            return self.benchmark_runs
        return samples_for_percentile(95, self.latency_confidence)

    def target(self, name: str) -> TargetGate:
        """The gate on target ``name``."""
        return next(gate for gate in self.targets if gate.target == name)


@dataclass(frozen=True)
class Evidence:
    """What was measured for one version: AP on the pinned set and p95 per target, with sources."""

    version: int
    ap: float | None = None
    ap_evidence: dict[str, Any] = field(default_factory=dict)
    # Mask AP (segm/AP) from the same evaluation; None for a detection model.
    mask_ap: float | None = None
    # Per target that ships a variant: that artifact's AP on the pinned set, with sources.
    variant_ap: dict[str, float] = field(default_factory=dict)
    variant_ap_evidence: dict[str, dict[str, Any]] = field(default_factory=dict)
    p95_ms: dict[str, float] = field(default_factory=dict)
    p95_evidence: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per target: the paired A/B against production (jobs.benchmark's summary), if measured.
    p95_paired: dict[str, dict[str, Any]] = field(default_factory=dict)


def check_gates(
    policy: GatePolicy, candidate: Evidence, baseline: Evidence | None
) -> list[GateResult]:
    """One result per check of ``policy``; a check with no baseline to compare with passes.

    ``baseline`` is the current production version's evidence, or None when there is none (the
    first production version): relative checks then pass and say so.
    """
    results: list[GateResult] = []
    if policy.ap_floor is not None:
        results.append(_ap_floor(policy.ap_floor, candidate))
    if policy.max_ap_drop is not None:
        results.append(_ap_drop(policy.max_ap_drop, candidate, baseline))
    if policy.mask_ap_floor is not None:
        results.append(_mask_ap_floor(policy.mask_ap_floor, candidate))
    if policy.max_mask_ap_drop is not None:
        results.append(_mask_ap_drop(policy.max_mask_ap_drop, candidate, baseline))
    for gate in policy.targets:
        if gate.variant is not None:
            # What ships on the target is held to the same AP checks as the checkpoint.
            shipped = _shipped(candidate, gate.target)
            base = _shipped(baseline, gate.target) if baseline is not None else None
            if policy.ap_floor is not None:
                results.append(_targeted(_ap_floor(policy.ap_floor, shipped), gate))
            if policy.max_ap_drop is not None:
                results.append(_targeted(_ap_drop(policy.max_ap_drop, shipped, base), gate))
        if gate.max_p95_ratio is not None:
            results.append(_p95_ratio(gate.target, gate.max_p95_ratio, candidate, baseline))
        if gate.p95_sla_ms is not None:
            results.append(_p95_sla(gate.target, gate.p95_sla_ms, candidate))
    return results


def _shipped(evidence: Evidence, target: str) -> Evidence:
    """``evidence`` with the AP of what ships on ``target`` in place of the checkpoint's."""
    ap = evidence.variant_ap.get(target)
    return Evidence(
        version=evidence.version,
        ap=float("nan") if ap is None else ap,
        ap_evidence=evidence.variant_ap_evidence.get(target, {}),
    )


def _targeted(result: GateResult, gate: TargetGate) -> GateResult:
    """An AP check of the variant shipped on ``gate``'s target: named after it."""
    return replace(
        result,
        target=gate.target,
        detail=f"{gate.variant} on {gate.target}: {result.detail}",
    )


def _evidence(candidate: Evidence, baseline: Evidence | None, key: str) -> dict[str, Any]:
    out: dict[str, Any] = {"candidate": getattr(candidate, key)}
    if baseline is not None:
        out["baseline"] = getattr(baseline, key)
    return out


def _ap_floor(floor: float, candidate: Evidence) -> GateResult:
    ap = _required(candidate.ap, "candidate AP")
    evidence = {"candidate": candidate.ap_evidence}
    return _floor("ap_floor", AP_METRIC, "AP", ap, floor, evidence)


def _ap_drop(max_drop: float, candidate: Evidence, baseline: Evidence | None) -> GateResult:
    ap = _required(candidate.ap, "candidate AP")
    evidence = {"candidate": candidate.ap_evidence}
    if baseline is None:
        detail = "no production version to compare with"
        return _uncompared("max_ap_drop", AP_METRIC, ap, max_drop, detail, evidence)
    evidence["baseline"] = baseline.ap_evidence
    base = _required(baseline.ap, "production AP")
    return _drop("max_ap_drop", AP_METRIC, "AP", ap, base, baseline.version, max_drop, evidence)


def _no_mask_ap(gate: str, threshold: float, version: int, evidence: dict[str, Any]) -> GateResult:
    """A mask gate on a version whose evaluation has no mask AP: it fails, saying why."""
    return GateResult(
        gate=gate,
        metric=MASK_AP_METRIC,
        candidate=None,
        baseline=None,
        threshold=threshold,
        passed=False,
        detail=f"v{version} has no mask AP (segm/AP): a mask gate needs a segmentation model "
        "(a seg-* size) evaluated on a set with masks",
        evidence=evidence,
    )


def _mask_ap_floor(floor: float, candidate: Evidence) -> GateResult:
    evidence = {"candidate": candidate.ap_evidence}
    if candidate.mask_ap is None or math.isnan(candidate.mask_ap):
        return _no_mask_ap("mask_ap_floor", floor, candidate.version, evidence)
    return _floor("mask_ap_floor", MASK_AP_METRIC, "mask AP", candidate.mask_ap, floor, evidence)


def _mask_ap_drop(max_drop: float, candidate: Evidence, baseline: Evidence | None) -> GateResult:
    gate = "max_mask_ap_drop"
    evidence = {"candidate": candidate.ap_evidence}
    if candidate.mask_ap is None or math.isnan(candidate.mask_ap):
        return _no_mask_ap(gate, max_drop, candidate.version, evidence)
    ap = float(candidate.mask_ap)
    if baseline is None:
        detail = "no production version to compare with"
        return _uncompared(gate, MASK_AP_METRIC, ap, max_drop, detail, evidence)
    evidence["baseline"] = baseline.ap_evidence
    if baseline.mask_ap is None or math.isnan(baseline.mask_ap):
        # Production is a detection model: there is no mask AP to hold the candidate to.
        detail = f"production v{baseline.version} has no mask AP to compare with"
        return _uncompared(gate, MASK_AP_METRIC, ap, max_drop, detail, evidence)
    base = float(baseline.mask_ap)
    return _drop(gate, MASK_AP_METRIC, "mask AP", ap, base, baseline.version, max_drop, evidence)


def _floor(
    gate: str, metric: str, label: str, value: float, floor: float, evidence: dict[str, Any]
) -> GateResult:
    """``value`` (an AP named ``label`` in the detail) held to ``floor``."""
    value = float(value)
    passed = value >= floor
    detail = (
        f"{label} {value:.4f} meets the floor {floor:.4f}"
        if passed
        else f"{label} {value:.4f} is {floor - value:.4f} below the floor {floor:.4f}"
    )
    return GateResult(
        gate=gate,
        metric=metric,
        candidate=value,
        baseline=None,
        threshold=floor,
        passed=passed,
        detail=detail,
        evidence=evidence,
    )


def _uncompared(
    gate: str, metric: str, value: float, max_drop: float, detail: str, evidence: dict[str, Any]
) -> GateResult:
    """A relative check with nothing to compare with: it passes, and ``detail`` says why."""
    return GateResult(
        gate=gate,
        metric=metric,
        candidate=value,
        baseline=None,
        threshold=max_drop,
        passed=True,
        detail=detail,
        evidence=evidence,
    )


def _drop(
    gate: str,
    metric: str,
    label: str,
    value: float,
    base: float,
    version: int,
    max_drop: float,
    evidence: dict[str, Any],
) -> GateResult:
    """``value`` may be at most ``max_drop`` below production v``version``'s ``base``."""
    drop = base - value
    passed = drop <= max_drop + 1e-12
    if passed:
        detail = (
            f"{label} {value:.4f} vs production v{version} {base:.4f}: change {-drop:+.4f}, "
            f"within the allowed drop {max_drop:.4f}"
        )
    else:
        detail = (
            f"{label} {value:.4f} is {drop:.4f} below production v{version}'s {base:.4f}; "
            f"the policy allows a drop of {max_drop:.4f} (exceeded by {drop - max_drop:.4f})"
        )
    return GateResult(
        gate=gate,
        metric=metric,
        candidate=value,
        baseline=base,
        threshold=max_drop,
        passed=passed,
        detail=detail,
        evidence=evidence,
    )


def _p95_ratio(
    target: str, max_ratio: float, candidate: Evidence, baseline: Evidence | None
) -> GateResult:
    p95 = _required(candidate.p95_ms.get(target), f"candidate p95 on {target}")
    evidence = {"candidate": candidate.p95_evidence.get(target, {})}
    if baseline is None:
        return GateResult(
            gate="max_p95_ratio",
            target=target,
            metric=P95_METRIC,
            candidate=p95,
            baseline=None,
            threshold=max_ratio,
            passed=True,
            detail="no production version to compare with",
            evidence=evidence,
        )
    paired = candidate.p95_paired.get(target)
    if paired is None:
        return GateResult(
            gate="max_p95_ratio",
            target=target,
            metric=P95_METRIC,
            candidate=p95,
            baseline=None,
            threshold=max_ratio,
            passed=False,
            detail=f"no paired measurement of v{candidate.version} against production "
            f"v{baseline.version} on {target}: a ratio gate compares both in one benchmark",
            evidence=evidence,
        )
    outcome, detail = _describe_pair(target, max_ratio, baseline.version, paired)
    arms = paired["arms"]
    return GateResult(
        gate="max_p95_ratio",
        target=target,
        metric=P95_METRIC,
        candidate=float(arms["candidate"]["p95_ms"]),
        baseline=float(arms["baseline"]["p95_ms"]),
        threshold=max_ratio,
        passed=outcome == "pass",
        detail=detail,
        evidence={**evidence, "verdict": outcome, "paired": paired},
    )


def _describe_pair(
    target: str, max_ratio: float, baseline_version: int, paired: dict[str, Any]
) -> tuple[Verdict, str]:
    """The verdict on the p95 ratio's interval, and the sentence with every figure behind it."""
    p95 = paired["ratio"]["p95"]
    ratio, low, high = float(p95["ratio"]), float(p95["low"]), float(p95["high"])
    outcome = ratio_verdict(low, high, max_ratio)
    arms = paired["arms"]
    cand, base = arms["candidate"], arms["baseline"]
    cv = max(float(cand["cv"]), float(base["cv"]))
    interval = f"{ratio:.2f} [{low:.2f}, {high:.2f}]"
    figures = (
        f"p95 {float(cand['p95_ms']):.1f} ms vs production v{baseline_version} "
        f"{float(base['p95_ms']):.1f} ms, {int(cand['n'])} samples per arm, "
        f"{float(p95['confidence']):.0%} interval, noise CV {cv:.0%}"
    )
    if outcome == "pass":
        detail = f"p95 ratio on {target} {interval} is within {max_ratio:.2f}: {figures}"
    elif outcome == "fail":
        detail = f"p95 ratio on {target} {interval} is above {max_ratio:.2f}: {figures}"
    else:
        detail = (
            f"inconclusive: p95 ratio {interval} straddles {max_ratio:.2f}; noise CV {cv:.0%} "
            f"({target}: {figures})"
        )
    return outcome, detail


def _p95_sla(target: str, sla_ms: float, candidate: Evidence) -> GateResult:
    p95 = _required(candidate.p95_ms.get(target), f"candidate p95 on {target}")
    passed = p95 <= sla_ms
    detail = (
        f"p95 on {target} {p95:.1f} ms meets the SLA {sla_ms:.1f} ms"
        if passed
        else f"p95 on {target} {p95:.1f} ms exceeds the SLA {sla_ms:.1f} ms by "
        f"{p95 - sla_ms:.1f} ms"
    )
    return GateResult(
        gate="p95_sla",
        target=target,
        metric=P95_METRIC,
        candidate=p95,
        baseline=None,
        threshold=sla_ms,
        passed=passed,
        detail=detail,
        evidence={"candidate": candidate.p95_evidence.get(target, {})},
    )


def _required(value: float | None, what: str) -> float:
    if value is None:
        raise ValueError(f"{what} was not measured")
    return float(value)
