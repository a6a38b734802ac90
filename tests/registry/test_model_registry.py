"""The model registry store on SQLite and PostgreSQL: versions, stages, promotions, rollback,
audit; the stage rules are enforced by the database itself, not only by this code."""

from __future__ import annotations

import csv
import io
import threading
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from detrforge.platform.errors import ConflictError, InvalidSpecError, NotFoundError
from detrforge.registry.audit import AUDIT_CSV_COLUMNS
from detrforge.registry.entities import GateResult, PromotionState, Stage
from fixtures_db import RegistryStores

ACTOR = "key:test-approver"
PASS = GateResult(
    gate="ap_floor",
    metric="bbox/AP",
    candidate=0.5,
    baseline=None,
    threshold=0.1,
    passed=True,
    detail="AP 0.5000 meets the floor 0.1000",
)
FAIL = GateResult(
    gate="max_ap_drop",
    metric="bbox/AP",
    candidate=0.01,
    baseline=0.5,
    threshold=0.02,
    passed=False,
    detail="AP 0.0100 is 0.4900 below production v1's 0.5000",
)


def _register(registry: RegistryStores, name: str = "shelf", n: int = 1) -> list[int]:
    versions = []
    for i in range(n):
        version = registry.models.register_version(
            name,
            checkpoint_uri=f"file:///ckpt/{name}-{i}.pth",
            checkpoint_sha256=f"{i:064x}",
            checkpoint_bytes=1000 + i,
            model_size="nano",
            resolution=128,
            class_names=["square"],
            params={"lr": 5e-4},
            source_job_id=f"ft-{i}",
            actor=ACTOR,
            request_id=f"req-register-{i}",
        )
        versions.append(version.version)
    return versions


def _promote(
    registry: RegistryStores,
    name: str,
    version: int,
    to: str = "production",
    *,
    passed: bool = True,
    request_id: str | None = None,
) -> Any:
    promotion = registry.promotions.request(
        name, version, to, actor=ACTOR, reason="test", request_id=request_id
    )
    production = registry.models.version_in_stage(name, Stage.production)
    registry.promotions.update(
        promotion.id,
        state=PromotionState.running,
        baseline_version=production.version if production else None,
    )
    return registry.promotions.finish(
        promotion.id,
        gate_results=[PASS if passed else FAIL],
        passed=passed,
        message="all gates passed" if passed else "max_ap_drop failed",
    )


@pytest.fixture
def shelf(registry_stores: RegistryStores) -> RegistryStores:
    registry_stores.models.create_model("shelf", description="test model", actor=ACTOR)
    return registry_stores


def test_versions_are_numbered_per_model_and_keep_lineage(shelf: RegistryStores) -> None:
    assert _register(shelf, n=3) == [1, 2, 3]
    shelf.models.create_model("other", actor=ACTOR)
    assert _register(shelf, "other", n=1) == [1]
    v2 = shelf.models.get_version("shelf", 2)
    assert (v2.stage, v2.source_job_id, v2.checkpoint_bytes) == (Stage.none, "ft-1", 1001)
    assert v2.class_names == ["square"] and v2.params == {"lr": 5e-4}
    assert [v.version for v in shelf.models.list_versions("shelf")] == [3, 2, 1]
    with pytest.raises(NotFoundError, match="no version 9"):
        shelf.models.get_version("shelf", 9)
    with pytest.raises(NotFoundError, match="not found"):
        shelf.models.get_version("nope", 1)


def test_model_names_are_checked_and_unique(registry_stores: RegistryStores) -> None:
    registry_stores.models.create_model("shelf", actor=ACTOR)
    with pytest.raises(ConflictError, match="exists"):
        registry_stores.models.create_model("shelf", actor=ACTOR)
    with pytest.raises(InvalidSpecError) as err:
        registry_stores.models.create_model("bad name!", actor=ACTOR)
    assert err.value.field == "name"


def test_promotion_archives_the_replaced_version_and_rollback_walks_back(
    shelf: RegistryStores,
) -> None:
    _register(shelf, n=3)
    assert _promote(shelf, "shelf", 1).state == PromotionState.applied
    assert _promote(shelf, "shelf", 2).state == PromotionState.applied
    assert _promote(shelf, "shelf", 3).state == PromotionState.applied
    stages = {v.version: v.stage for v in shelf.models.list_versions("shelf")}
    assert stages == {1: Stage.archived, 2: Stage.archived, 3: Stage.production}
    assert shelf.models.get_version("shelf", 3).replaced_version == 2

    assert shelf.models.rollback("shelf", actor=ACTOR, reason="bad p95").version == 2
    assert shelf.models.version_in_stage("shelf", Stage.production).version == 2  # type: ignore[union-attr]
    assert shelf.models.rollback("shelf", actor=ACTOR).version == 1
    stages = {v.version: v.stage for v in shelf.models.list_versions("shelf")}
    assert stages == {1: Stage.production, 2: Stage.archived, 3: Stage.archived}
    with pytest.raises(ConflictError, match="no previous production version"):
        shelf.models.rollback("shelf", actor=ACTOR)
    events, _ = shelf.audit.list(model_name="shelf", action="rollback")
    assert [(e.before, e.after, e.version) for e in events] == [
        ("production=v3", "production=v2", 2),
        ("production=v2", "production=v1", 1),
    ]
    assert events[0].reason == "bad p95" and events[0].actor == ACTOR


def test_rollback_without_production_is_a_conflict(shelf: RegistryStores) -> None:
    _register(shelf, n=1)
    with pytest.raises(ConflictError, match="no production version"):
        shelf.models.rollback("shelf", actor=ACTOR)


def test_a_failed_gate_leaves_stages_untouched(shelf: RegistryStores) -> None:
    _register(shelf, n=2)
    _promote(shelf, "shelf", 1)
    failed = _promote(shelf, "shelf", 2, passed=False)
    assert failed.state == PromotionState.failed
    assert failed.gate_results == [FAIL]
    assert failed.message == "max_ap_drop failed"
    assert shelf.models.get_version("shelf", 1).stage == Stage.production
    assert shelf.models.get_version("shelf", 2).stage == Stage.none
    events, _ = shelf.audit.list(model_name="shelf", action="promotion.fail")
    assert [(e.version, e.before, e.after) for e in events] == [
        (2, "production=v1", "production=v1")
    ]


def test_staging_then_production(shelf: RegistryStores) -> None:
    _register(shelf, n=2)
    _promote(shelf, "shelf", 1, "staging")
    _promote(shelf, "shelf", 2, "staging")
    assert {v.version: v.stage for v in shelf.models.list_versions("shelf")} == {
        1: Stage.archived,
        2: Stage.staging,
    }
    _promote(shelf, "shelf", 2, "production")
    assert shelf.models.version_in_stage("shelf", Stage.staging) is None
    assert shelf.models.get_version("shelf", 2).stage == Stage.production
    with pytest.raises(ConflictError, match="cannot be promoted to production"):
        shelf.promotions.request("shelf", 2, "production", actor=ACTOR)
    with pytest.raises(InvalidSpecError) as err:
        shelf.promotions.request("shelf", 1, "archived", actor=ACTOR)
    assert err.value.field == "to"


def test_one_active_promotion_per_model_and_refusals_are_audited(shelf: RegistryStores) -> None:
    _register(shelf, n=2)
    first = shelf.promotions.request("shelf", 1, "production", actor=ACTOR, request_id="r1")
    with pytest.raises(ConflictError, match=first.id):
        shelf.promotions.request("shelf", 2, "production", actor=ACTOR, request_id="r2")
    events, _ = shelf.audit.list(model_name="shelf", action="promotion.")
    assert [(e.action, e.request_id) for e in events] == [
        ("promotion.request", "r1"),
        ("promotion.reject", "r2"),
    ]


def test_production_moved_while_gates_ran_fails_the_promotion(shelf: RegistryStores) -> None:
    _register(shelf, n=3)
    _promote(shelf, "shelf", 1)
    _promote(shelf, "shelf", 2)
    pending = shelf.promotions.request("shelf", 3, "production", actor=ACTOR)
    shelf.promotions.update(pending.id, state=PromotionState.running, baseline_version=2)
    shelf.models.rollback("shelf", actor=ACTOR)  # production is v1 now
    done = shelf.promotions.finish(pending.id, gate_results=[PASS], passed=True, message="ok")
    assert done.state == PromotionState.failed
    assert "production changed from production=v2 to production=v1" in (done.message or "")
    assert shelf.models.version_in_stage("shelf", Stage.production).version == 1  # type: ignore[union-attr]


def test_database_refuses_two_production_versions(shelf: RegistryStores, db_engine: Engine) -> None:
    _register(shelf, n=2)
    _promote(shelf, "shelf", 1)
    with pytest.raises(IntegrityError), db_engine.begin() as conn:
        conn.execute(text("UPDATE model_versions SET stage = 'production' WHERE version = 2"))
    with pytest.raises(IntegrityError), db_engine.begin() as conn:
        conn.execute(text("UPDATE model_versions SET stage = 'staging'"))
    assert shelf.models.get_version("shelf", 2).stage == Stage.none


def test_database_refuses_two_active_promotions(shelf: RegistryStores, db_engine: Engine) -> None:
    _register(shelf, n=2)
    shelf.promotions.request("shelf", 1, "production", actor=ACTOR)
    with pytest.raises(IntegrityError), db_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO promotions (id, model_id, version, from_stage, to_stage, state, actor,"
                " reason, evidence, created_at, updated_at) SELECT 'p2', model_id, 2, 'none',"
                " 'production', 'pending', 'x', '', '[]', created_at, updated_at FROM promotions"
            )
        )


def test_audit_is_append_only(shelf: RegistryStores, db_engine: Engine) -> None:
    _register(shelf, n=1)
    for statement in ("UPDATE audit_events SET actor = 'mallory'", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="append-only"), db_engine.begin() as conn:
            conn.execute(text(statement))
    events, total = shelf.audit.list(model_name="shelf")
    assert total == 2 and [e.action for e in events] == ["model.create", "version.register"]


def test_audit_filters_and_csv(shelf: RegistryStores) -> None:
    _register(shelf, n=2)
    _promote(shelf, "shelf", 1, request_id="req-p1")
    shelf.models.set_policy("shelf", {"ap_floor": 0.1}, actor="key:boss", reason="tighten")
    events, total = shelf.audit.list(model_name="shelf")
    assert total == 6
    assert [e.action for e in events] == [
        "model.create",
        "version.register",
        "version.register",
        "promotion.request",
        "promotion.apply",
        "policy.set",
    ]
    only, n = shelf.audit.list(actor="key:boss")
    assert n == 1 and only[0].after == '{"ap_floor": 0.1}'
    by_request, _ = shelf.audit.list(request_id="req-p1")
    assert [e.action for e in by_request] == ["promotion.request", "promotion.apply"]
    assert by_request[1].after == "production=v1" and by_request[1].before == "production=none"
    page, _ = shelf.audit.list(model_name="shelf", limit=2, offset=4)
    assert [e.action for e in page] == ["promotion.apply", "policy.set"]
    rows = list(csv.DictReader(io.StringIO(shelf.audit.to_csv(events))))
    assert tuple(rows[0]) == AUDIT_CSV_COLUMNS
    assert [r["action"] for r in rows] == [e.action for e in events]
    assert rows[4]["details"].startswith('{"gates"')


def test_before_commit_failure_applies_nothing(shelf: RegistryStores) -> None:
    _register(shelf, n=2)
    _promote(shelf, "shelf", 1)
    pending = shelf.promotions.request("shelf", 2, "production", actor=ACTOR)
    shelf.promotions.update(pending.id, state=PromotionState.running, baseline_version=1)

    def crash() -> None:
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        shelf.promotions.finish(
            pending.id, gate_results=[PASS], passed=True, message="ok", before_commit=crash
        )
    assert shelf.promotions.get(pending.id).state == PromotionState.running
    assert shelf.promotions.get(pending.id).gate_results == []
    assert shelf.models.get_version("shelf", 1).stage == Stage.production
    assert shelf.models.get_version("shelf", 2).stage == Stage.none
    done = shelf.promotions.finish(pending.id, gate_results=[PASS], passed=True, message="ok")
    assert done.state == PromotionState.applied
    assert shelf.models.get_version("shelf", 2).stage == Stage.production


def test_concurrent_requests_serialize(shelf: RegistryStores) -> None:
    _register(shelf, n=20)
    outcomes: list[str] = []
    barrier = threading.Barrier(20)

    def request(version: int) -> None:
        barrier.wait()
        try:
            shelf.promotions.request(
                "shelf", version, "production", actor=ACTOR, request_id=f"req-{version}"
            )
            outcomes.append("accepted")
        except ConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=request, args=(v,)) for v in range(1, 21)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["accepted"] + ["conflict"] * 19
    events, _ = shelf.audit.list(model_name="shelf", action="promotion.")
    assert sorted(e.request_id for e in events) == sorted(f"req-{v}" for v in range(1, 21))


def test_audit_csv_escapes_formula_cells(shelf: RegistryStores) -> None:
    formulas = ["=1+1", "+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    for formula in formulas:
        shelf.audit.record(
            actor=formula,
            action="test.formula",
            model_name="shelf",
            reason=formula,
            request_id=formula,
        )
    events, _ = shelf.audit.list(action="test.formula")
    rows = list(csv.DictReader(io.StringIO(shelf.audit.to_csv(events))))
    assert [r["reason"] for r in rows] == ["'" + formula for formula in formulas]
    assert [r["actor"] for r in rows] == ["'" + formula for formula in formulas]
    assert [r["request_id"] for r in rows] == ["'" + formula for formula in formulas]
    assert {r["action"] for r in rows} == {"test.formula"}
