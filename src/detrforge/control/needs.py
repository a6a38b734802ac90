"""What a promotion's gates need as evidence, and what came back: the vocabulary between the
promotion machine (``promotion.py``) and the evidence runner that gathers it (``evidence.py``).

``plan`` orders the work so the gate's own jobs do not disturb each other's figures: every
evaluation first, and the latency measurement only once none is running. A ratio gate's
measurement is one paired benchmark job (candidate and production interleaved in one process on
the target), never two jobs at different times under different loads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from detrforge.registry.entities import ModelVersion
from detrforge.registry.gates import Evidence, GatePolicy

__all__ = [
    "ClusterBusy",
    "EvidenceFailed",
    "EvidenceKind",
    "EvidenceNeed",
    "EvidenceResult",
    "EvidenceRole",
    "EvidenceRunner",
    "evidence_for",
    "find",
    "plan",
]

EvidenceRole = Literal["candidate", "baseline"]
EvidenceKind = Literal["evaluate", "benchmark"]


@dataclass(frozen=True, slots=True)
class EvidenceNeed:
    """One piece of evidence a gate reads: the ``kind`` of job, for whose version, on which
    hardware ``target``. An evaluation with a target scores the variant the policy ships there;
    one without scores the checkpoint."""

    role: EvidenceRole
    kind: EvidenceKind
    target: str | None = None

    def describe(self, version: int) -> str:
        """``evaluate of v2 (baseline)`` / ``benchmark of v3 (candidate, cpu-1t)``."""
        where = f", {self.target}" if self.target else ""
        return f"{self.kind} of v{version} ({self.role}{where})"


@dataclass(frozen=True, slots=True)
class EvidenceResult:
    """Where a need stands: ``submitting`` (its job id recorded, the job maybe not submitted
    yet), ``submitted`` (or the job's state, lowercased) with its job id, or ``done`` with the
    figure (``ap`` and, for a segmentation model, ``mask_ap``; or ``p95_ms``) and where it came
    from.

    ``to_json``/``from_json`` keep the shape stored in the promotion's ``evidence`` column.
    """

    need: EvidenceNeed
    version: int
    state: str
    job_id: str | None = None
    ap: float | None = None
    mask_ap: float | None = None
    p95_ms: float | None = None
    record_id: str | None = None
    mlflow_run_id: str | None = None
    node_id: str | None = None
    reused: bool = False
    # A paired benchmark's summary (both arms, ratios with intervals, verdict, node load).
    paired: dict[str, Any] | None = None
    # The stored variants measured instead of the checkpoints ({"variant", "sha256"}): the
    # version's own, and a paired benchmark's baseline arm's.
    artifact: dict[str, str] | None = None
    baseline_artifact: dict[str, str] | None = None

    @property
    def done(self) -> bool:
        return self.state == "done"

    def to_json(self) -> dict[str, Any]:
        item: dict[str, Any] = {"role": self.need.role, "kind": self.need.kind}
        if self.need.target is not None:
            item["target"] = self.need.target
        item["version"] = self.version
        item["job_id"] = self.job_id
        item["state"] = self.state
        if self.artifact is not None:
            item["artifact"] = self.artifact
        if self.baseline_artifact is not None:
            item["baseline_artifact"] = self.baseline_artifact
        if self.done and self.need.kind == "evaluate":
            item.update(ap=self.ap, mlflow_run_id=self.mlflow_run_id)
            if self.mask_ap is not None:
                item["mask_ap"] = self.mask_ap
        elif self.done:
            item.update(
                record_id=self.record_id,
                p95_ms=self.p95_ms,
                mlflow_run_id=self.mlflow_run_id,
                node_id=self.node_id,
            )
            if self.paired is not None:
                item["paired"] = self.paired
        if self.reused:
            item["reused"] = True
        return item

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> EvidenceResult:
        ap, p95, mask_ap = item.get("ap"), item.get("p95_ms"), item.get("mask_ap")
        return cls(
            need=EvidenceNeed(role=item["role"], kind=item["kind"], target=item.get("target")),
            version=int(item["version"]),
            state=str(item["state"]),
            job_id=item.get("job_id"),
            ap=float(ap) if ap is not None else None,
            mask_ap=float(mask_ap) if mask_ap is not None else None,
            p95_ms=float(p95) if p95 is not None else None,
            record_id=item.get("record_id"),
            mlflow_run_id=item.get("mlflow_run_id"),
            node_id=item.get("node_id"),
            reused=bool(item.get("reused", False)),
            paired=item.get("paired"),
            artifact=item.get("artifact"),
            baseline_artifact=item.get("baseline_artifact"),
        )

    def source(self) -> dict[str, Any]:
        """What a gate result cites as its evidence (ids, never figures)."""
        keys = (
            "version",
            "job_id",
            "mlflow_run_id",
            "record_id",
            "node_id",
            "reused",
            "artifact",
            "baseline_artifact",
        )
        item = self.to_json()
        return {key: item[key] for key in keys if key in item}


class ClusterBusy(Exception):
    """The cluster could not take a job just now; the promotion retries on its next pass."""


class EvidenceFailed(Exception):
    """Evidence the gates need could not be gathered: the promotion fails with this message."""


class EvidenceRunner(Protocol):
    """Gathers evidence: ``control.evidence.JobEvidenceRunner`` runs evaluate/benchmark jobs."""

    def start(
        self,
        need: EvidenceNeed,
        version: ModelVersion,
        *,
        policy: GatePolicy,
        promotion_id: str,
        job_id: str,
        baseline: ModelVersion | None,
    ) -> EvidenceResult:
        """Submit the job that answers ``need`` as ``job_id`` (``submitted``), or reuse a result
        (``done``).

        Idempotent on ``job_id``: a job already submitted under it is adopted, never submitted
        again. A candidate's benchmark on a target with a ratio gate is measured paired with
        ``baseline`` (production), in the same job.

        Raises:
            ClusterBusy: try again later.
            EvidenceFailed: the evidence cannot be gathered.
        """
        ...

    def read(self, result: EvidenceResult, *, policy: GatePolicy) -> EvidenceResult:
        """The submitted ``result`` now: still running, or ``done`` with its figure.

        Raises:
            EvidenceFailed: its job failed, or its result cannot be used.
        """
        ...


def find(
    evidence: Sequence[EvidenceResult],
    role: EvidenceRole,
    kind: EvidenceKind,
    target: str | None = None,
) -> EvidenceResult | None:
    wanted = EvidenceNeed(role, kind, target)
    return next((item for item in evidence if item.need == wanted), None)


def plan(
    policy: GatePolicy, baseline: ModelVersion | None, evidence: Sequence[EvidenceResult]
) -> list[EvidenceNeed]:
    """The evidence the gates still need and that nobody has gathered yet.

    Benchmarks wait until every evaluation is done: a latency figure taken while the gate's own
    evaluation job shares the node would measure that job. A ratio gate's benchmark is the
    candidate's, paired with the baseline in one job; there is no baseline benchmark of its own.
    """
    needs: list[EvidenceNeed] = []
    if policy.needs_ap:
        # The checkpoint's AP, then that of each variant a target ships (the same AP gates).
        shipped = [gate.target for gate in policy.targets if gate.variant is not None]
        for target in (None, *shipped):
            needs.append(EvidenceNeed("candidate", "evaluate", target))
            if baseline is not None and policy.compares_ap:
                needs.append(EvidenceNeed("baseline", "evaluate", target))
    gathered = {item.need for item in evidence}
    evaluated = all(need in gathered for need in needs) and all(
        item.done for item in evidence if item.need.kind == "evaluate"
    )
    if evaluated:
        needs.extend(EvidenceNeed("candidate", "benchmark", gate.target) for gate in policy.targets)
    return [need for need in needs if need not in gathered]


def evidence_for(
    role: EvidenceRole, version: ModelVersion, items: Sequence[EvidenceResult]
) -> Evidence:
    ap_item = find(items, role, "evaluate")
    benchmarks = [i for i in items if i.need.role == role and i.need.kind == "benchmark"]
    shipped = [
        i for i in items if i.need.role == role and i.need.kind == "evaluate" and i.need.target
    ]
    return Evidence(
        version=version.version,
        ap=ap_item.ap if ap_item else None,
        mask_ap=ap_item.mask_ap if ap_item else None,
        ap_evidence=ap_item.source() if ap_item else {},
        variant_ap={
            str(i.need.target): i.ap if i.ap is not None else float("nan") for i in shipped
        },
        variant_ap_evidence={str(i.need.target): i.source() for i in shipped},
        p95_ms={
            str(i.need.target): i.p95_ms if i.p95_ms is not None else float("nan")
            for i in benchmarks
        },
        p95_evidence={str(i.need.target): i.source() for i in benchmarks},
        p95_paired={str(i.need.target): i.paired for i in benchmarks if i.paired is not None},
    )
