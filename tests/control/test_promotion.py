"""The promotion state machine on the real stores (SQLite and PostgreSQL), with an evidence runner
that returns chosen figures: every path from request to the one committing transaction."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from detrforge.control.leases import PromotionLeases
from detrforge.control.promotion import (
    ClusterBusy,
    EvidenceFailed,
    EvidenceNeed,
    EvidenceResult,
    PromotionService,
    check_transition,
    plan,
    verdict,
)
from detrforge.platform.errors import ConflictError, PermissionDeniedError
from detrforge.registry.entities import (
    ApiKey,
    ModelVersion,
    Promotion,
    PromotionState,
    Role,
    Stage,
)
from detrforge.registry.gates import GatePolicy
from fixtures_db import RegistryStores
from fixtures_gates import paired_summary

ACTOR = "key:test-approver"
MODEL = "shelf"
EVAL = {"dataset": "/data/shelf", "fingerprint": "f" * 64}


@dataclass
class FakeRunner:
    """Evidence with chosen figures: ``ap[version]``, ``p95[(version, target)]``.

    Starts submit a job under the id they are given, done on its first read, unless the
    cluster is ``busy`` (that many starts refused) or the need is in ``fail``. ``job_ids`` lists
    the id of every start, refused ones included.
    """

    ap: dict[int, float] = field(default_factory=dict)
    # Mask AP of segmentation versions (absent: a detection model's evaluation has none).
    mask_ap: dict[int, float] = field(default_factory=dict)
    p95: dict[tuple[int, str], float] = field(default_factory=dict)
    # AP of the variant the policy ships on a target: ``variant_ap[(version, target)]``.
    variant_ap: dict[tuple[int, str], float] = field(default_factory=dict)
    # The p95 ratio interval's relative half-width, per candidate version (default 5%).
    spread: dict[int, float] = field(default_factory=dict)
    busy: int = 0
    fail: set[tuple[str, str]] = field(default_factory=set)
    # Jobs stay submitted when read (an API that dies before they end).
    hold: bool = False
    started: list[tuple[str, str, str | None, int]] = field(default_factory=list)
    # job id -> the baseline version its benchmark was paired with
    paired_with: dict[str, int] = field(default_factory=dict)
    job_ids: list[str] = field(default_factory=list)

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
        self.job_ids.append(job_id)
        if self.busy:
            self.busy -= 1
            raise ClusterBusy("the cluster has no free CPU for 2 s")
        self.started.append((need.role, need.kind, need.target, version.version))
        if need.kind == "benchmark" and baseline is not None:
            if policy.target(str(need.target)).max_p95_ratio is not None:
                self.paired_with[job_id] = baseline.version
        shipped = policy.target(need.target).variant if need.target else None
        artifact = {"variant": shipped, "sha256": f"{version.version:064x}"} if shipped else None
        return EvidenceResult(
            need=need, version=version.version, state="submitted", job_id=job_id, artifact=artifact
        )

    def read(self, result: EvidenceResult, *, policy: GatePolicy) -> EvidenceResult:
        if self.hold:
            return result
        if (result.need.role, result.need.kind) in self.fail:
            raise EvidenceFailed(
                f"the {result.need.kind} job {result.job_id} of v{result.version} "
                f"({result.need.role}) ended FAILED: CUDA out of memory"
            )
        return self._done(result)

    def _done(self, result: EvidenceResult) -> EvidenceResult:
        if result.need.kind == "evaluate":
            target = result.need.target
            return replace(
                result,
                state="done",
                ap=self.variant_ap[(result.version, target)] if target else self.ap[result.version],
                mask_ap=self.mask_ap.get(result.version),
                mlflow_run_id="run",
            )
        target = str(result.need.target)
        p95 = self.p95[(result.version, target)]
        paired = None
        if (base := self.paired_with.get(str(result.job_id))) is not None:
            spread = self.spread.get(result.version, 0.05)
            paired = paired_summary(p95, self.p95[(base, target)], spread=spread)
        return replace(
            result,
            state="done",
            p95_ms=p95,
            record_id=f"bench-v{result.version}-{target}",
            mlflow_run_id="run",
            node_id="node-1",
            paired=paired,
        )


@dataclass
class RecordingMirror:
    synced: list[str] = field(default_factory=list)

    def sync(self, name: str) -> bool:
        self.synced.append(name)
        return True


def _key(role: Role = Role.approver) -> ApiKey:
    return ApiKey(
        id="key-1",
        name="test-approver",
        role=role,
        prefix="df_test",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def _register(stores: RegistryStores, tmp_path: Path, n: int) -> list[Path]:
    """``n`` versions of MODEL, each a small file registered with its real sha256."""
    paths = []
    for i in range(1, n + 1):
        path = tmp_path / f"ckpt-{i}.pth"
        path.write_bytes(f"weights of version {i}".encode() * 64)
        stores.models.register_version(
            MODEL,
            checkpoint_uri=str(path),
            checkpoint_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            checkpoint_bytes=path.stat().st_size,
            model_size="nano",
            resolution=128,
            actor=ACTOR,
        )
        paths.append(path)
    return paths


@pytest.fixture
def stores(registry_stores: RegistryStores) -> RegistryStores:
    registry_stores.models.create_model(MODEL, actor=ACTOR)
    return registry_stores


def _machine(
    stores: RegistryStores, runner: FakeRunner, *, replica: str = "replica-a", ttl_s: float = 30
) -> PromotionService:
    """The state machine as one API replica runs it, with its own promotion leases."""
    leases = PromotionLeases(stores.leases, ttl_s=ttl_s, renew_interval_s=ttl_s / 3, owner=replica)
    return PromotionService(
        store=stores.promotions, runner=runner, mirror=RecordingMirror(), leases=leases
    )


def _promote(machine: PromotionService, version: int) -> Promotion:
    promotion = machine.request(
        MODEL, version, to=Stage.production, reason="test", principal=_key(), request_id="req"
    )
    return machine.advance(promotion.id)


def _in_production(stores: RegistryStores) -> int | None:
    holder = stores.models.version_in_stage(MODEL, Stage.production)
    return holder.version if holder else None


def _policy(stores: RegistryStores, **policy: Any) -> None:
    stores.models.set_policy(MODEL, GatePolicy.model_validate(policy).model_dump(), actor=ACTOR)


def test_all_gates_pass_and_the_candidate_enters_production(
    stores: RegistryStores, tmp_path: Path
) -> None:
    _register(stores, tmp_path, 2)
    runner = FakeRunner(ap={1: 0.50, 2: 0.49}, p95={(1, "cpu"): 10.0, (2, "cpu"): 11.0})
    machine = _machine(stores, runner)
    assert _promote(machine, 1).state == PromotionState.applied  # no policy yet
    _policy(
        stores,
        eval=EVAL,
        ap_floor=0.3,
        max_ap_drop=0.02,
        targets=[{"target": "cpu", "max_p95_ratio": 1.2, "p95_sla_ms": 50.0}],
    )

    done = _promote(machine, 2)

    assert done.state == PromotionState.applied
    assert done.message == "all 5 gates passed"
    assert done.baseline_version == 1
    figures = {(g.gate, g.target): (g.candidate, g.baseline, g.passed) for g in done.gate_results}
    assert figures == {
        ("integrity", None): (None, None, True),
        ("ap_floor", None): (0.49, None, True),
        ("max_ap_drop", None): (0.49, 0.50, True),
        ("max_p95_ratio", "cpu"): (11.0, 10.0, True),
        ("p95_sla", "cpu"): (11.0, None, True),
    }
    assert (_in_production(stores), stores.models.get_version(MODEL, 1).stage) == (
        2,
        Stage.archived,
    )
    # The evaluations first; then one benchmark: the candidate paired with production.
    assert runner.started[:2] == [
        ("candidate", "evaluate", None, 2),
        ("baseline", "evaluate", None, 1),
    ]
    assert runner.started[2:] == [("candidate", "benchmark", "cpu", 2)]
    assert list(runner.paired_with.values()) == [1]
    assert machine.mirror.synced == [MODEL, MODEL]  # type: ignore[attr-defined]


def test_an_ap_drop_is_refused_with_its_figures(stores: RegistryStores, tmp_path: Path) -> None:
    _register(stores, tmp_path, 2)
    machine = _machine(stores, FakeRunner(ap={1: 0.1781, 2: 0.0014}))
    _promote(machine, 1)
    _policy(stores, eval=EVAL, max_ap_drop=0.02)

    done = _promote(machine, 2)

    assert done.state == PromotionState.failed
    assert done.message == (
        "refused: max_ap_drop: AP 0.0014 is 0.1767 below production v1's 0.1781; the policy "
        "allows a drop of 0.0200 (exceeded by 0.1567)"
    )
    assert _in_production(stores) == 1
    assert stores.models.get_version(MODEL, 2).stage == Stage.none


def test_the_variant_a_target_ships_is_held_to_the_ap_gates(
    stores: RegistryStores, tmp_path: Path
) -> None:
    """The checkpoint's AP holds, but the int8 artifact that ships on ``cpu`` loses 0.09 against
    production's: the promotion is refused on that target, citing the artifact's sha256."""
    _register(stores, tmp_path, 2)
    runner = FakeRunner(
        ap={1: 0.50, 2: 0.50},
        variant_ap={(1, "cpu"): 0.49, (2, "cpu"): 0.40},
        p95={(1, "cpu"): 10.0, (2, "cpu"): 9.0},
    )
    machine = _machine(stores, runner)
    _policy(
        stores,
        eval=EVAL,
        ap_floor=0.3,
        max_ap_drop=0.02,
        targets=[{"target": "cpu", "p95_sla_ms": 50.0, "variant": "onnx-int8"}],
    )
    first = _promote(machine, 1)
    assert first.state == PromotionState.applied, first.message

    done = _promote(machine, 2)

    assert done.state == PromotionState.failed
    assert done.message == (
        "refused: max_ap_drop: onnx-int8 on cpu: AP 0.4000 is 0.0900 below production v1's "
        "0.4900; the policy allows a drop of 0.0200 (exceeded by 0.0700)"
    )
    figures = {(g.gate, g.target): (g.candidate, g.baseline, g.passed) for g in done.gate_results}
    assert figures == {
        ("integrity", None): (None, None, True),
        ("ap_floor", None): (0.50, None, True),
        ("max_ap_drop", None): (0.50, 0.50, True),
        ("ap_floor", "cpu"): (0.40, None, True),
        ("max_ap_drop", "cpu"): (0.40, 0.49, False),
        ("p95_sla", "cpu"): (9.0, None, True),
    }
    [shipped] = [g for g in done.gate_results if (g.gate, g.target) == ("max_ap_drop", "cpu")]
    assert shipped.evidence["candidate"]["artifact"] == {
        "variant": "onnx-int8",
        "sha256": "0" * 63 + "2",
    }
    assert shipped.evidence["baseline"]["artifact"]["sha256"] == "0" * 63 + "1"
    # The checkpoint's evaluations, then the shipped artifact's, then the benchmark.
    assert runner.started[-5:] == [
        ("candidate", "evaluate", None, 2),
        ("baseline", "evaluate", None, 1),
        ("candidate", "evaluate", "cpu", 2),
        ("baseline", "evaluate", "cpu", 1),
        ("candidate", "benchmark", "cpu", 2),
    ]
    assert _in_production(stores) == 1


def test_a_mask_ap_drop_is_refused_with_both_figures(
    stores: RegistryStores, tmp_path: Path
) -> None:
    """Box AP holds but mask AP drops: the mask gate alone refuses, naming both figures."""
    _register(stores, tmp_path, 2)
    runner = FakeRunner(ap={1: 0.30, 2: 0.31}, mask_ap={1: 0.2510, 2: 0.0420})
    machine = _machine(stores, runner)
    _promote(machine, 1)
    _policy(stores, eval=EVAL, max_ap_drop=0.02, mask_ap_floor=0.01, max_mask_ap_drop=0.02)

    done = _promote(machine, 2)

    assert done.state == PromotionState.failed
    # Production's evaluation is gathered once for both drop gates.
    assert runner.started.count(("baseline", "evaluate", None, 1)) == 1
    gates = {g.gate: g for g in done.gate_results}
    assert gates["max_ap_drop"].passed and gates["mask_ap_floor"].passed
    mask = gates["max_mask_ap_drop"]
    assert (mask.metric, mask.candidate, mask.baseline, mask.passed) == (
        "segm/AP",
        0.0420,
        0.2510,
        False,
    )
    assert done.message == (
        "refused: max_mask_ap_drop: mask AP 0.0420 is 0.2090 below production v1's 0.2510; the "
        "policy allows a drop of 0.0200 (exceeded by 0.1890)"
    )
    assert _in_production(stores) == 1


def test_a_mask_gate_on_a_detection_model_fails_saying_why(
    stores: RegistryStores, tmp_path: Path
) -> None:
    _register(stores, tmp_path, 1)
    machine = _machine(stores, FakeRunner(ap={1: 0.5}))
    _policy(stores, eval=EVAL, mask_ap_floor=0.1)

    done = _promote(machine, 1)

    assert done.state == PromotionState.failed
    [gate] = [g for g in done.gate_results if g.gate == "mask_ap_floor"]
    assert gate.candidate is None and not gate.passed
    assert "v1 has no mask AP (segm/AP)" in gate.detail


def test_a_p95_ratio_over_the_limit_is_refused(stores: RegistryStores, tmp_path: Path) -> None:
    _register(stores, tmp_path, 2)
    machine = _machine(stores, FakeRunner(p95={(1, "cpu"): 10.0, (2, "cpu"): 15.0}))
    _promote(machine, 1)
    _policy(stores, targets=[{"target": "cpu", "max_p95_ratio": 1.2}])

    done = _promote(machine, 2)

    assert done.state == PromotionState.failed
    [ratio] = [g for g in done.gate_results if g.gate == "max_p95_ratio"]
    assert (ratio.candidate, ratio.baseline, ratio.threshold, ratio.passed) == (
        15.0,
        10.0,
        1.2,
        False,
    )
    assert done.message == (
        "refused: max_p95_ratio: p95 ratio on cpu 1.50 [1.42, 1.58] is above 1.20: p95 15.0 ms "
        "vs production v1 10.0 ms, 292 samples per arm, 95% interval, noise CV 4%"
    )
    assert ratio.evidence["verdict"] == "fail"
    assert ratio.evidence["paired"]["ratio"]["p95"]["low"] == pytest.approx(1.425)
    assert _in_production(stores) == 1


@pytest.mark.parametrize(
    ("candidate_p95", "spread", "state", "verdict"),
    [
        (10.5, 0.05, PromotionState.applied, "pass"),  # [1.00, 1.10]: within 1.2
        (11.0, 0.25, PromotionState.failed, "inconclusive"),  # [0.83, 1.38] straddles 1.2
        (13.0, 0.05, PromotionState.failed, "fail"),  # [1.24, 1.37]: all above
    ],
)
def test_the_p95_ratio_gate_reads_the_interval_not_the_point(
    stores: RegistryStores,
    tmp_path: Path,
    candidate_p95: float,
    spread: float,
    state: PromotionState,
    verdict: str,
) -> None:
    _register(stores, tmp_path, 2)
    runner = FakeRunner(p95={(1, "cpu"): 10.0, (2, "cpu"): candidate_p95}, spread={2: spread})
    machine = _machine(stores, runner)
    _promote(machine, 1)
    _policy(stores, targets=[{"target": "cpu", "max_p95_ratio": 1.2}])

    done = _promote(machine, 2)

    assert done.state == state
    [ratio] = [g for g in done.gate_results if g.gate == "max_p95_ratio"]
    assert ratio.evidence["verdict"] == verdict
    if verdict == "inconclusive":
        assert done.message == (
            "refused: max_p95_ratio: inconclusive: p95 ratio 1.10 [0.83, 1.38] straddles 1.20; "
            "noise CV 4% (cpu: p95 11.0 ms vs production v1 10.0 ms, 292 samples per arm, 95% "
            "interval, noise CV 4%)"
        )


def test_a_ratio_gate_without_a_paired_measurement_fails(
    stores: RegistryStores, tmp_path: Path
) -> None:
    """Old evidence (a baseline benchmark of its own, from before paired gates) is not enough."""
    _register(stores, tmp_path, 2)
    policy = GatePolicy.model_validate({"targets": [{"target": "cpu", "max_p95_ratio": 1.2}]})
    candidate, baseline = (stores.models.get_version(MODEL, v) for v in (2, 1))
    evidence = [
        EvidenceResult(EvidenceNeed(role, "benchmark", "cpu"), v, "done", p95_ms=10.0)
        for role, v in (("candidate", 2), ("baseline", 1))
    ]
    results, passed, message = verdict(policy, candidate, baseline, evidence)
    assert not passed
    assert message == (
        "refused: max_p95_ratio: no paired measurement of v2 against production v1 on cpu: a "
        "ratio gate compares both in one benchmark"
    )


def test_a_failed_job_fails_the_promotion_saying_which(
    stores: RegistryStores, tmp_path: Path
) -> None:
    _register(stores, tmp_path, 1)
    runner = FakeRunner(ap={1: 0.5}, fail={("candidate", "evaluate")})
    _policy(stores, eval=EVAL, ap_floor=0.3)

    done = _promote(_machine(stores, runner), 1)

    assert done.state == PromotionState.failed
    [job_id] = runner.job_ids
    assert done.message == (
        f"the evaluate job {job_id} of v1 (candidate) ended FAILED: CUDA out of memory"
    )
    assert done.gate_results == []
    assert _in_production(stores) is None
    assert [e["job_id"] for e in done.evidence] == [job_id]


def test_a_busy_cluster_keeps_it_running_until_a_later_pass(
    stores: RegistryStores, tmp_path: Path
) -> None:
    _register(stores, tmp_path, 1)
    runner = FakeRunner(p95={(1, "cpu"): 20.0}, busy=2)
    machine = _machine(stores, runner)
    _policy(stores, targets=[{"target": "cpu", "p95_sla_ms": 50.0}])
    promotion = machine.request(
        MODEL, 1, to=Stage.production, reason="", principal=_key(), request_id=None
    )

    assert machine.advance(promotion.id).state == PromotionState.running
    assert machine.advance_all() == 1
    waiting = machine.store.get(promotion.id)
    assert waiting.state == PromotionState.running
    assert runner.started == []
    # Each refused submission spent its job id; the next try is on record under a new one.
    [reserved] = waiting.evidence
    assert reserved["state"] == "submitting"
    assert len(set(runner.job_ids)) == 2 and reserved["job_id"] not in runner.job_ids
    done = machine.get(promotion.id)  # reading it advances it: the cluster took the job

    assert done.state == PromotionState.applied
    assert [(g.gate, g.candidate) for g in done.gate_results] == [
        ("integrity", None),
        ("p95_sla", 20.0),
    ]
    assert runner.job_ids[-1] == reserved["job_id"]
    assert [e["job_id"] for e in done.evidence] == [reserved["job_id"]]


def test_changed_bytes_are_refused_by_the_integrity_gate(
    stores: RegistryStores, tmp_path: Path
) -> None:
    [path] = _register(stores, tmp_path, 1)
    registered = stores.models.get_version(MODEL, 1).checkpoint_sha256
    path.write_bytes(b"tampered")

    done = _promote(_machine(stores, FakeRunner()), 1)

    assert done.state == PromotionState.failed
    actual = hashlib.sha256(b"tampered").hexdigest()
    assert done.message == (
        f"checkpoint changed or corrupt: {path} has sha256 {actual}, registered {registered}"
    )
    [gate] = done.gate_results
    assert (gate.gate, gate.passed, gate.evidence["sha256"]) == ("integrity", False, actual)
    assert _in_production(stores) is None


# Long enough that A's steps, on a loaded 2-core machine, end well within A's lease.
LEASE_S = 3.0


def test_another_replica_resumes_a_running_promotion_once_the_lease_expires(
    stores: RegistryStores, tmp_path: Path
) -> None:
    _register(stores, tmp_path, 1)
    _policy(stores, eval=EVAL, ap_floor=0.3)
    # Replica A submits the evaluation, then dies before it is read back.
    submitter = FakeRunner(ap={1: 0.4}, hold=True)
    first = _machine(stores, submitter, replica="replica-a", ttl_s=LEASE_S)
    promotion = first.request(
        MODEL, 1, to=Stage.production, reason="", principal=_key(), request_id=None
    )
    running = first.advance(promotion.id)
    [job_id] = submitter.job_ids
    assert running.state == PromotionState.running
    assert running.evidence == [
        {
            "role": "candidate",
            "kind": "evaluate",
            "version": 1,
            "job_id": job_id,
            "state": "submitted",
        }
    ]
    restarted = FakeRunner(ap={1: 0.4})
    second = _machine(stores, restarted, replica="replica-b", ttl_s=LEASE_S)
    # A's lease still holds: B reads the promotion but does not advance it.
    assert second.get(promotion.id).evidence == running.evidence
    assert second.advance_all() == 1 and restarted.job_ids == []

    time.sleep(LEASE_S + 0.3)
    done = second.get(promotion.id)

    assert done.state == PromotionState.applied
    assert restarted.started == []  # nothing submitted twice
    assert [(g.gate, g.candidate) for g in done.gate_results] == [
        ("integrity", None),
        ("ap_floor", 0.4),
    ]
    assert first.advance(promotion.id) == done  # A, back from a stall, changes nothing


class Crash(BaseException):
    """The process dies at this point."""


@dataclass
class DyingRunner(FakeRunner):
    """Ray accepts the job, then the replica dies before it records the submission."""

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
        super().start(
            need,
            version,
            policy=policy,
            promotion_id=promotion_id,
            job_id=job_id,
            baseline=baseline,
        )
        raise Crash


def test_a_replica_dying_mid_submission_leaves_the_job_ids_to_the_next(
    stores: RegistryStores, tmp_path: Path
) -> None:
    _register(stores, tmp_path, 1)
    _policy(stores, eval=EVAL, ap_floor=0.3, targets=[{"target": "cpu", "p95_sla_ms": 50.0}])
    dying = DyingRunner(ap={1: 0.4}, p95={(1, "cpu"): 20.0})
    first = _machine(stores, dying, replica="replica-a", ttl_s=0.5)
    promotion = first.request(
        MODEL, 1, to=Stage.production, reason="", principal=_key(), request_id=None
    )
    with pytest.raises(Crash):
        first.advance(promotion.id)

    # The job id was on record before the job was submitted (the benchmark waits for it).
    recorded = stores.promotions.get(promotion.id).evidence
    assert [(e["kind"], e["state"]) for e in recorded] == [("evaluate", "submitting")]
    assert dying.job_ids == [recorded[0]["job_id"]]
    time.sleep(0.7)
    taker = FakeRunner(ap={1: 0.4}, p95={(1, "cpu"): 20.0})
    done = _machine(stores, taker, replica="replica-b", ttl_s=0.5).get(promotion.id)

    assert done.state == PromotionState.applied
    # The job A submitted is submitted again under its id (the runner adopts it), not anew.
    assert taker.job_ids[0] == recorded[0]["job_id"]
    assert [e["kind"] for e in done.evidence] == ["evaluate", "benchmark"]
    assert [e["job_id"] for e in done.evidence] == taker.job_ids


def test_terminal_promotions_refuse_every_transition(
    stores: RegistryStores, tmp_path: Path
) -> None:
    _register(stores, tmp_path, 1)
    machine = _machine(stores, FakeRunner())
    done = _promote(machine, 1)
    assert done.state == PromotionState.applied

    for to in PromotionState:
        with pytest.raises(ConflictError, match=f"is applied; it cannot become {to.value}"):
            check_transition(done, to)
    with pytest.raises(ConflictError, match="is already applied"):
        stores.promotions.update(done.id, state=PromotionState.running)
    assert machine.advance(done.id) == done
    pending = replace(done, state=PromotionState.pending)
    with pytest.raises(ConflictError, match="is pending; it cannot become applied"):
        check_transition(pending, PromotionState.applied)


def test_production_needs_an_approver(stores: RegistryStores, tmp_path: Path) -> None:
    _register(stores, tmp_path, 1)
    with pytest.raises(PermissionDeniedError, match="has operator"):
        _machine(stores, FakeRunner()).request(
            MODEL,
            1,
            to=Stage.production,
            reason="",
            principal=_key(Role.operator),
            request_id=None,
        )


OLD_EVIDENCE = [
    {"role": "candidate", "kind": "evaluate", "version": 2, "job_id": "ev-1", "state": "running"},
    {
        "role": "candidate",
        "kind": "evaluate",
        "version": 2,
        "state": "done",
        "job_id": "ev-2",
        "ap": 0.41,
        "mlflow_run_id": None,
        "reused": True,
    },
    {
        "role": "baseline",
        "kind": "benchmark",
        "target": "cpu-1t",
        "version": 1,
        "job_id": "bm-1",
        "state": "done",
        "record_id": "rec-1",
        "p95_ms": 12.5,
        "mlflow_run_id": "run-1",
        "node_id": "node-a",
    },
]
# A shipped variant's evaluation and a paired benchmark of two variants: the artifacts measured.
VARIANT_EVIDENCE = [
    {
        "role": "candidate",
        "kind": "evaluate",
        "target": "cpu-1t",
        "version": 2,
        "job_id": "ev-9",
        "state": "done",
        "artifact": {"variant": "onnx-int8", "sha256": "a" * 64},
        "ap": 0.52,
        "mlflow_run_id": "run-9",
    },
    {
        "role": "candidate",
        "kind": "benchmark",
        "target": "cpu-1t",
        "version": 2,
        "job_id": "bm-9",
        "state": "running",
        "artifact": {"variant": "onnx-int8", "sha256": "a" * 64},
        "baseline_artifact": {"variant": "onnx-int8", "sha256": "b" * 64},
    },
]
# A segmentation model's evaluation: its mask AP rides along with its box AP.
MASK_EVIDENCE = {
    "role": "baseline",
    "kind": "evaluate",
    "version": 1,
    "job_id": "ev-3",
    "state": "done",
    "ap": 0.30,
    "mlflow_run_id": "run-3",
    "mask_ap": 0.25,
}


@pytest.mark.parametrize("item", [*OLD_EVIDENCE, MASK_EVIDENCE, *VARIANT_EVIDENCE])
def test_stored_evidence_json_round_trips(item: dict[str, Any]) -> None:
    result = EvidenceResult.from_json(item)
    assert result.to_json() == item
    assert EvidenceResult.from_json(result.to_json()) == result


def test_stored_evidence_loads_into_typed_values() -> None:
    results = [EvidenceResult.from_json(item) for item in OLD_EVIDENCE]
    assert [r.need for r in results] == [
        EvidenceNeed("candidate", "evaluate"),
        EvidenceNeed("candidate", "evaluate"),
        EvidenceNeed("baseline", "benchmark", "cpu-1t"),
    ]
    assert (results[1].ap, results[1].reused, results[2].p95_ms) == (0.41, True, 12.5)
    policy = GatePolicy.model_validate(
        {"eval": EVAL, "max_ap_drop": 0.1, "targets": [{"target": "cpu-1t", "max_p95_ratio": 2}]}
    )
    # One evaluation still runs: the benchmark waits for it (never on a node it shares).
    assert plan(policy, None, results) == []
    finished = [replace(r, state="done", ap=0.4) if r.state == "running" else r for r in results]
    assert plan(policy, None, finished) == [EvidenceNeed("candidate", "benchmark", "cpu-1t")]


def test_a_shipped_variant_adds_its_evaluations_before_the_benchmarks() -> None:
    policy = GatePolicy.model_validate(
        {
            "eval": EVAL,
            "max_ap_drop": 0.1,
            "targets": [
                {"target": "cpu-1t", "max_p95_ratio": 2, "variant": "onnx-int8"},
                {"target": "cpu-4t", "p95_sla_ms": 90},
            ],
        }
    )
    baseline = object()  # any production version: only its presence matters to plan
    needs = plan(policy, baseline, [])  # type: ignore[arg-type]
    assert needs == [
        EvidenceNeed("candidate", "evaluate"),
        EvidenceNeed("baseline", "evaluate"),
        EvidenceNeed("candidate", "evaluate", "cpu-1t"),
        EvidenceNeed("baseline", "evaluate", "cpu-1t"),
    ]
    done = [
        EvidenceResult(need, 2 if need.role == "candidate" else 1, "done", "job", ap=0.5)
        for need in needs
    ]
    assert plan(policy, baseline, done) == [  # type: ignore[arg-type]
        EvidenceNeed("candidate", "benchmark", "cpu-1t"),
        EvidenceNeed("candidate", "benchmark", "cpu-4t"),
    ]
