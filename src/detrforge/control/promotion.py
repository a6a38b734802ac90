"""What happens when a version is promoted: the whole flow, in one state machine.

``request`` records a ``pending`` promotion (202 for the caller) and wakes the worker. Each
``advance`` moves it as far as it can go now, and never blocks on a job:

1. ``pending``: the candidate's stored bytes are re-hashed (the integrity gate); the version in
   production becomes the baseline; the promotion turns ``running``.
2. ``running``: ``plan`` lists the evidence the policy's gates still need (an evaluation of
   candidate and baseline on the pinned set, a benchmark of each on every required target); the
   evidence runner starts each need (a job, or an earlier result reused) and reads submitted ones
   back. Everything gathered is kept on the promotion, so a restarted API resumes it from the
   database. A busy cluster leaves it ``running`` for the next pass; failed evidence fails it.
3. verdict: the integrity gate once more, then ``gates.check_gates``; ``finish`` records every
   gate result and, if all passed, changes the stages: one transaction (``applied`` or
   ``failed``).

``advance`` runs on every read of an active promotion and in the background (``run_forever``)
in every API replica; only the one holding the promotion's lease (``control.leases``) advances it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from detrforge.control.failpoints import failpoint
from detrforge.control.integrity import integrity_gate
from detrforge.control.leases import PromotionLeases
from detrforge.platform.errors import (
    ConflictError,
    DetrforgeError,
    LeaseLostError,
    PermissionDeniedError,
)
from detrforge.registry.entities import (
    ACTIVE_PROMOTION_STATES,
    ApiKey,
    GateResult,
    ModelVersion,
    Promotion,
    PromotionState,
    Role,
    Stage,
)
from detrforge.registry.gates import Evidence, GatePolicy, check_gates
from detrforge.registry.jobs import new_job_id
from detrforge.registry.promotions import PromotionStore

__all__ = [
    "TRANSITIONS",
    "ClusterBusy",
    "EvidenceFailed",
    "EvidenceNeed",
    "EvidenceResult",
    "EvidenceRunner",
    "PromotionService",
    "StageMirror",
    "check_transition",
    "find",
    "plan",
    "verdict",
]

log = logging.getLogger(__name__)

# The only moves a promotion makes; applied and failed are final.
TRANSITIONS: Mapping[PromotionState, frozenset[PromotionState]] = {
    PromotionState.pending: frozenset({PromotionState.running, PromotionState.failed}),
    PromotionState.running: frozenset({PromotionState.applied, PromotionState.failed}),
    PromotionState.applied: frozenset(),
    PromotionState.failed: frozenset(),
}

EvidenceRole = Literal["candidate", "baseline"]
EvidenceKind = Literal["evaluate", "benchmark"]


def check_transition(promotion: Promotion, to: PromotionState) -> None:
    """Raise ``ConflictError`` unless ``promotion`` may move to ``to``."""
    if to not in TRANSITIONS[promotion.state]:
        raise ConflictError(
            f"promotion {promotion.id} is {promotion.state.value}; it cannot become {to.value}"
        )


# -- evidence: what the gates need, and what came back ---------------------------------------
@dataclass(frozen=True, slots=True)
class EvidenceNeed:
    """One piece of evidence a gate reads: the ``kind`` of job, for whose version, on which
    hardware ``target`` (benchmarks only)."""

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
    figure (``ap`` or ``p95_ms``) and where it came from.

    ``to_json``/``from_json`` keep the shape stored in the promotion's ``evidence`` column.
    """

    need: EvidenceNeed
    version: int
    state: str
    job_id: str | None = None
    ap: float | None = None
    p95_ms: float | None = None
    record_id: str | None = None
    mlflow_run_id: str | None = None
    node_id: str | None = None
    reused: bool = False

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
        if self.done and self.need.kind == "evaluate":
            item.update(ap=self.ap, mlflow_run_id=self.mlflow_run_id)
        elif self.done:
            item.update(
                record_id=self.record_id,
                p95_ms=self.p95_ms,
                mlflow_run_id=self.mlflow_run_id,
                node_id=self.node_id,
            )
        if self.reused:
            item["reused"] = True
        return item

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> EvidenceResult:
        ap, p95 = item.get("ap"), item.get("p95_ms")
        return cls(
            need=EvidenceNeed(role=item["role"], kind=item["kind"], target=item.get("target")),
            version=int(item["version"]),
            state=str(item["state"]),
            job_id=item.get("job_id"),
            ap=float(ap) if ap is not None else None,
            p95_ms=float(p95) if p95 is not None else None,
            record_id=item.get("record_id"),
            mlflow_run_id=item.get("mlflow_run_id"),
            node_id=item.get("node_id"),
            reused=bool(item.get("reused", False)),
        )

    def source(self) -> dict[str, Any]:
        """What a gate result cites as its evidence (ids, never figures)."""
        keys = ("version", "job_id", "mlflow_run_id", "record_id", "node_id", "reused")
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
        reference: EvidenceResult | None,
    ) -> EvidenceResult:
        """Submit the job that answers ``need`` as ``job_id`` (``submitted``), or reuse a result
        (``done``).

        Idempotent on ``job_id``: a job already submitted under it is adopted, never submitted
        again. ``reference`` is the candidate's finished result of the same kind and target,
        for a baseline measured the same way.

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


class StageMirror(Protocol):
    """Told after every finished promotion (``control.mirror.MlflowMirror`` in the API)."""

    def sync(self, name: str) -> bool: ...


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

    A baseline benchmark is planned only once the candidate's is done: it is reused, or
    measured, like the candidate's.
    """
    needs: list[EvidenceNeed] = []
    if policy.needs_ap:
        needs.append(EvidenceNeed("candidate", "evaluate"))
        if baseline is not None and policy.max_ap_drop is not None:
            needs.append(EvidenceNeed("baseline", "evaluate"))
    for gate in policy.targets:
        needs.append(EvidenceNeed("candidate", "benchmark", gate.target))
        if baseline is not None and gate.max_p95_ratio is not None:
            mine = find(evidence, "candidate", "benchmark", gate.target)
            if mine is not None and mine.done:
                needs.append(EvidenceNeed("baseline", "benchmark", gate.target))
    gathered = {item.need for item in evidence}
    return [need for need in needs if need not in gathered]


def _evidence_for(
    role: EvidenceRole, version: ModelVersion, items: Sequence[EvidenceResult]
) -> Evidence:
    ap_item = find(items, role, "evaluate")
    benchmarks = [i for i in items if i.need.role == role and i.need.kind == "benchmark"]
    return Evidence(
        version=version.version,
        ap=ap_item.ap if ap_item else None,
        ap_evidence=ap_item.source() if ap_item else {},
        p95_ms={
            str(i.need.target): i.p95_ms if i.p95_ms is not None else float("nan")
            for i in benchmarks
        },
        p95_evidence={str(i.need.target): i.source() for i in benchmarks},
    )


def _figure(value: float | None) -> float:
    # A missing figure is NaN, which every gate fails (gates.py).
    return float("nan") if value is None else value


def verdict(
    policy: GatePolicy,
    candidate: ModelVersion,
    baseline: ModelVersion | None,
    evidence: Sequence[EvidenceResult],
) -> tuple[list[GateResult], bool, str]:
    """Every gate result (integrity first), whether all passed, and the sentence that says so.

    The stored bytes are re-hashed once more here, just before the stage changes: what is
    promoted is exactly what was registered, however long the evidence took.
    """
    results = [
        integrity_gate(candidate),
        *check_gates(
            policy,
            _evidence_for("candidate", candidate, evidence),
            _evidence_for("baseline", baseline, evidence) if baseline else None,
        ),
    ]
    passed = all(result.passed for result in results)
    if policy.is_empty and passed:
        message = "no gates configured for this model: promoted without checks"
    elif passed:
        message = f"all {len(results)} gates passed"
    else:
        failed = [r for r in results if not r.passed]
        message = "refused: " + "; ".join(f"{r.gate}: {r.detail}" for r in failed)
    return results, passed, message


# -- the machine -------------------------------------------------------------------------------
@dataclass
class PromotionService:
    """Requests promotions and advances them; the store keeps all state, so any instance (a
    restarted API) resumes where another stopped."""

    store: PromotionStore
    runner: EvidenceRunner
    mirror: StageMirror
    leases: PromotionLeases
    failpoints: frozenset[str] = frozenset()
    wake: threading.Event = field(default_factory=threading.Event)
    _advance_lock: threading.Lock = field(default_factory=threading.Lock)

    def request(
        self,
        name: str,
        version: int,
        *,
        to: Stage,
        reason: str,
        principal: ApiKey,
        request_id: str | None,
    ) -> Promotion:
        """Record the request (202 for the caller) and wake the promotion worker.

        Raises:
            PermissionDeniedError: production needs the approver role.
            ConflictError: another promotion of the model is active, or the stage is held.
        """
        if to == Stage.production and not principal.role.allows(Role.approver):
            raise PermissionDeniedError(
                f"promoting to production needs the approver role or higher; key "
                f"{principal.name!r} has {principal.role.value}"
            )
        promotion = self.store.request(
            name, version, to.value, actor=principal.principal, reason=reason, request_id=request_id
        )
        self.wake.set()
        return promotion

    def get(self, promotion_id: str) -> Promotion:
        """A promotion, advanced first if it is still active."""
        promotion = self.store.get(promotion_id)
        if not promotion.state.is_terminal:
            promotion = self.advance(promotion_id)
        return promotion

    def advance_all(self) -> int:
        """Advance every active promotion one step; returns how many were looked at."""
        active = self.store.list(states=ACTIVE_PROMOTION_STATES, limit=1000)
        for promotion in reversed(active):
            try:
                self.advance(promotion.id)
            except DetrforgeError as exc:
                log.warning("promotion %s: %s", promotion.id, exc.message)
        return len(active)

    def run_forever(self, stop: threading.Event, *, interval_s: float) -> None:
        """Advance active promotions: woken by a new request, else every ``interval_s``; the
        leases taken are renewed meanwhile, and released once ``stop`` is set."""
        renewing = threading.Event()  # set: the renewer ends (however this loop ends)
        renewer = threading.Thread(
            target=self.leases.keep_renewed, args=(renewing,), name="lease-renewer", daemon=True
        )
        renewer.start()
        try:
            while not stop.is_set():
                try:
                    self.advance_all()
                except Exception:  # noqa: BLE001 - must survive a flaky cluster or tracker
                    log.exception("promotion pass failed")
                self.wake.wait(interval_s)
                self.wake.clear()
        finally:
            renewing.set()
            renewer.join()
            self.leases.release_all()

    def advance(self, promotion_id: str) -> Promotion:
        """Move one promotion as far as it can go now, if this replica holds its lease (or can
        take it); never blocks on a job."""
        with self._advance_lock:
            if not self.leases.claim(promotion_id):
                return self.store.get(promotion_id)  # another replica advances it, or it ended
            try:
                return self._advance(promotion_id)
            except LeaseLostError as exc:
                log.warning("promotion %s: %s", promotion_id, exc.message)
                return self.store.get(promotion_id)

    def _advance(self, promotion_id: str) -> Promotion:
        step = self.store.step(promotion_id)
        promotion, candidate, baseline = step.promotion, step.candidate, step.baseline
        if promotion.state.is_terminal:
            return promotion
        policy = GatePolicy.model_validate(step.policy)
        if promotion.state == PromotionState.pending:
            integrity = integrity_gate(candidate)
            if not integrity.passed:
                return self._finish(promotion, [integrity], passed=False, message=integrity.detail)
            check_transition(promotion, PromotionState.running)
            baseline = step.production
            promotion = self.store.update(
                promotion.id,
                state=PromotionState.running,
                baseline_version=baseline.version if baseline else None,
                owner=self.leases.owner,
            )
        evidence = [EvidenceResult.from_json(item) for item in promotion.evidence]
        try:
            complete = self._gather(promotion, policy, candidate, baseline, evidence)
        except ClusterBusy as exc:
            # Unreachable or busy cluster: keep what was gathered, try again on the next pass.
            log.warning("promotion %s waits for the cluster: %s", promotion.id, exc)
            return self._save(promotion, evidence)
        except EvidenceFailed as exc:
            self._save(promotion, evidence)
            return self._finish(promotion, [], passed=False, message=str(exc))
        # Saved before the verdict: an API that dies in the commit resumes from finished evidence.
        promotion = self._save(promotion, evidence)
        if not complete:
            return promotion
        results, passed, message = verdict(policy, candidate, baseline, evidence)
        return self._finish(promotion, results, passed=passed, message=message)

    def _gather(
        self,
        promotion: Promotion,
        policy: GatePolicy,
        candidate: ModelVersion,
        baseline: ModelVersion | None,
        evidence: list[EvidenceResult],
    ) -> bool:
        """Start what is missing and read what was submitted, into ``evidence`` (in place, so a
        failure keeps what was gathered); True once nothing is missing or running."""
        for _ in range(2):  # a baseline benchmark is planned once the candidate's is known
            missing = plan(policy, baseline, evidence)
            for need in missing:
                # Its id is on record before the job exists: a taker resubmits under the same id.
                version = candidate if need.role == "candidate" else baseline
                assert version is not None
                job_id = new_job_id(need.kind)
                evidence.append(EvidenceResult(need, version.version, "submitting", job_id))
            if missing:
                self._save(promotion, evidence)
            for i, item in enumerate(evidence):
                if item.state != "submitting":
                    continue
                version = candidate if item.need.role == "candidate" else baseline
                assert version is not None and item.job_id is not None
                reference = find(evidence, "candidate", item.need.kind, item.need.target)
                try:
                    evidence[i] = self.runner.start(
                        item.need,
                        version,
                        policy=policy,
                        promotion_id=promotion.id,
                        job_id=item.job_id,
                        reference=reference if reference and reference.done else None,
                    )
                except ClusterBusy:
                    # The refused id is spent (its job row says "never started"): a new one.
                    evidence[i] = replace(item, job_id=new_job_id(item.need.kind))
                    raise
                except EvidenceFailed:
                    del evidence[i]
                    raise
            if missing and (hang := failpoint("promotion.after_submit", self.failpoints)):
                hang()
            for i, item in enumerate(evidence):
                if not item.done:
                    evidence[i] = self.runner.read(item, policy=policy)
            if not all(item.done for item in evidence):
                return False
        return not plan(policy, baseline, evidence)

    def _save(self, promotion: Promotion, evidence: Sequence[EvidenceResult]) -> Promotion:
        evidence_json = [item.to_json() for item in evidence]
        return self.store.update(promotion.id, evidence=evidence_json, owner=self.leases.owner)

    def _finish(
        self, promotion: Promotion, results: list[GateResult], *, passed: bool, message: str
    ) -> Promotion:
        finished = self.store.finish(
            promotion.id,
            gate_results=results,
            passed=passed,
            message=message,
            before_commit=failpoint("promotion.before_commit", self.failpoints),
            owner=self.leases.owner,
        )
        self.mirror.sync(promotion.model_name)
        return finished
