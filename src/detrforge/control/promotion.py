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
from typing import Protocol

from detrforge.control.failpoints import failpoint
from detrforge.control.integrity import integrity_gate
from detrforge.control.leases import PromotionLeases
from detrforge.control.needs import (
    ClusterBusy,
    EvidenceFailed,
    EvidenceNeed,
    EvidenceResult,
    EvidenceRunner,
    evidence_for,
    find,
    plan,
)
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
from detrforge.registry.gates import GatePolicy, check_gates
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


def check_transition(promotion: Promotion, to: PromotionState) -> None:
    """Raise ``ConflictError`` unless ``promotion`` may move to ``to``."""
    if to not in TRANSITIONS[promotion.state]:
        raise ConflictError(
            f"promotion {promotion.id} is {promotion.state.value}; it cannot become {to.value}"
        )


class StageMirror(Protocol):
    """Told after every finished promotion (``control.mirror.MlflowMirror`` in the API)."""

    def sync(self, name: str) -> bool: ...


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
            evidence_for("candidate", candidate, evidence),
            evidence_for("baseline", baseline, evidence) if baseline else None,
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
        for _ in range(2):  # benchmarks are planned once the evaluations are done
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
                try:
                    evidence[i] = self.runner.start(
                        item.need,
                        version,
                        policy=policy,
                        promotion_id=promotion.id,
                        job_id=item.job_id,
                        baseline=baseline,
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
