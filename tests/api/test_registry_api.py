"""The registry over REST on SQLite and PostgreSQL: register, promote (202 + background gates),
concurrency, integrity, rollback, MLflow aliases and the audit log. Promotions here use policies
that need no cluster job; the gates that do are in tests/jobs/test_promotion_gates.py."""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from mlflow import MlflowClient

from detrforge.registry.entities import Role
from fixtures_cluster import ApiHarness, wait_until

MODEL = "shelf"


def _post(api: ApiHarness, path: str, body: Any, role: Role = Role.approver, **kw: Any) -> Any:
    return api.client.post(f"/api/v1{path}", json=body, headers=api.headers(role), **kw)


def _get(api: ApiHarness, path: str, **params: Any) -> Any:
    response = api.client.get(f"/api/v1{path}", headers=api.headers(Role.viewer), params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _register(api: ApiHarness, checkpoint: Path, **extra: Any) -> dict[str, Any]:
    body = {"checkpoint": str(checkpoint), "model_size": "nano", "resolution": 128, **extra}
    response = _post(api, f"/models/{MODEL}/versions", body, Role.operator)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _promote_and_wait(api: ApiHarness, version: int, to: str = "production") -> dict[str, Any]:
    response = _post(api, f"/models/{MODEL}/versions/{version}/promotions", {"to": to})
    assert response.status_code == 202, response.text
    promotion_id = response.json()["id"]
    return dict(
        wait_until(
            lambda: _get(api, f"/promotions/{promotion_id}"),
            until=lambda p: p["state"] in ("applied", "failed"),
            what=f"promotion {promotion_id} of v{version} to {to} to end",
            timeout_s=60,
            every_s=0.2,
        )
    )


def _alias(api: ApiHarness, alias: str) -> str | None:
    client = MlflowClient(tracking_uri=api.settings.resolved_tracking_uri())
    try:
        return str(client.get_model_version_by_alias(MODEL, alias).version)
    except Exception:  # noqa: BLE001 - MLflow raises its own exception for a missing alias
        return None


@pytest.fixture
def model_api(offline_api: ApiHarness) -> ApiHarness:
    response = _post(offline_api, "/models", {"name": MODEL, "description": "d"}, Role.operator)
    assert response.status_code == 201, response.text
    return offline_api


def test_register_verifies_sha256_and_reads_class_names(
    model_api: ApiHarness, nano_checkpoint: Path
) -> None:
    version = _register(model_api, nano_checkpoint, description="first")
    assert version["version"] == 1 and version["stage"] == "none"
    sha256 = hashlib.sha256(nano_checkpoint.read_bytes()).hexdigest()
    assert version["checkpoint_sha256"] == sha256
    assert version["checkpoint_uri"] == f"{_artifacts(model_api)}/blobs/sha256/{sha256}"
    assert version["checkpoint_bytes"] == nano_checkpoint.stat().st_size
    assert version["class_names"]  # read from the checkpoint's args
    assert version["mlflow_version"] == "1"
    wrong = _post(
        model_api,
        f"/models/{MODEL}/versions",
        {"checkpoint": str(nano_checkpoint), "resolution": 128, "checkpoint_sha256": "0" * 64},
        Role.operator,
    )
    assert wrong.status_code == 409
    assert "checkpoint changed or corrupt" in wrong.json()["message"]
    assert wrong.json()["field"] == "checkpoint_sha256" and sha256 not in wrong.text
    bad_res = _post(
        model_api,
        f"/models/{MODEL}/versions",
        {"checkpoint": str(nano_checkpoint), "resolution": 130},
        Role.operator,
    )
    assert bad_res.status_code == 422 and bad_res.json()["field"] == "resolution"
    assert "128 or 160" in bad_res.json()["message"]
    missing = _post(model_api, "/models/nope/versions", {"checkpoint": "x"}, Role.operator)
    assert missing.status_code == 404


def test_promotion_roles_stages_aliases_and_rollback(
    model_api: ApiHarness, nano_checkpoint: Path
) -> None:
    for _ in range(3):
        _register(model_api, nano_checkpoint)
    refused = _post(
        model_api, f"/models/{MODEL}/versions/1/promotions", {"to": "production"}, Role.operator
    )
    assert refused.status_code == 403 and "approver" in refused.json()["message"]
    staged = _post(
        model_api, f"/models/{MODEL}/versions/1/promotions", {"to": "staging"}, Role.operator
    )
    assert staged.status_code == 202 and staged.json()["state"] == "pending"
    assert staged.headers["X-Request-ID"] == staged.json()["request_id"]
    wait_until(
        lambda: _alias(model_api, "staging"),
        until=lambda alias: alias == "1",
        fail_if=lambda alias: f"the alias points at v{alias}" if alias not in (None, "1") else None,
        what="MLflow alias 'staging' to point at v1",
        timeout_s=30,
        every_s=0.2,
    )

    for version in (1, 2, 3):
        promotion = _promote_and_wait(model_api, version)
        assert promotion["state"] == "applied", promotion
        assert promotion["message"].startswith("no gates configured")
        assert _alias(model_api, "production") == str(version)
    assert _alias(model_api, "staging") is None
    stages = {
        v["version"]: v["stage"] for v in _get(model_api, f"/models/{MODEL}/versions")["items"]
    }
    assert stages == {1: "archived", 2: "archived", 3: "production"}
    assert _get(model_api, f"/models/{MODEL}/aliases/production")["version"] == 3
    assert _get(model_api, f"/models/{MODEL}")["production_version"] == 3

    assert _post(model_api, f"/models/{MODEL}/rollback", {}, Role.operator).status_code == 403
    back = _post(model_api, f"/models/{MODEL}/rollback", {"reason": "p95 spike"})
    assert back.status_code == 200 and back.json()["version"] == 2
    assert _alias(model_api, "production") == "2"
    assert _post(model_api, f"/models/{MODEL}/rollback", {}).json()["version"] == 1
    assert _alias(model_api, "production") == "1"
    again = _post(model_api, f"/models/{MODEL}/rollback", {})
    assert again.status_code == 409
    assert "no previous production version" in again.json()["message"]

    audit = _get(model_api, "/audit", model=MODEL, action="rollback")
    assert [(e["before"], e["after"], e["reason"]) for e in audit["items"]] == [
        ("production=v3", "production=v2", "p95 spike"),
        ("production=v2", "production=v1", ""),
    ]
    assert audit["items"][0]["actor"] == "key:test-approver"


def test_rollback_with_no_production_is_409(model_api: ApiHarness) -> None:
    response = _post(model_api, f"/models/{MODEL}/rollback", {})
    assert response.status_code == 409
    assert "no production version" in response.json()["message"]


def _flip_byte(path: Path, offset: int = 1000) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _artifacts(api: ApiHarness) -> str:
    return api.settings.resolved_artifact_root()


def _local(uri: str) -> Path:
    return Path(unquote(urlsplit(uri).path))


def test_tampered_blob_fails_promotion(model_api: ApiHarness, nano_checkpoint: Path) -> None:
    version = _register(model_api, nano_checkpoint)
    _flip_byte(_local(version["checkpoint_uri"]))  # the registry's own copy changes
    promotion = _promote_and_wait(model_api, 1)
    assert promotion["state"] == "failed"
    assert promotion["message"].startswith("checkpoint changed or corrupt")
    [gate] = promotion["gate_results"]
    assert gate["gate"] == "integrity" and gate["passed"] is False
    assert gate["evidence"]["uri"] == version["checkpoint_uri"]
    assert _get(model_api, f"/models/{MODEL}/versions/1")["stage"] == "none"
    assert _alias(model_api, "production") is None


def test_version_bytes_come_only_from_its_blob(
    model_api: ApiHarness, nano_checkpoint: Path, tmp_path: Path
) -> None:
    original = tmp_path / "copy.pth"
    shutil.copyfile(nano_checkpoint, original)
    version = _register(model_api, original)
    registered = version["checkpoint_sha256"]
    assert version["checkpoint_uri"] == f"{_artifacts(model_api)}/blobs/sha256/{registered}"
    # The caller's file is replaced after registration: the version does not notice.
    _flip_byte(original)
    assert hashlib.sha256(original.read_bytes()).hexdigest() != registered
    blob = _local(version["checkpoint_uri"])
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == registered
    promotion = _promote_and_wait(model_api, 1, to="staging")
    assert promotion["state"] == "applied", promotion
    [gate] = promotion["gate_results"]
    assert (gate["gate"], gate["passed"]) == ("integrity", True)
    assert gate["evidence"] == {
        "uri": version["checkpoint_uri"],
        "sha256": registered,
        "registered": registered,
    }
    assert _get(model_api, f"/models/{MODEL}/aliases/staging")["checkpoint_uri"] == blob.as_uri()
    # Registering the same bytes again reuses the blob; the audit keeps where they came from.
    again = _register(model_api, nano_checkpoint)
    assert again["checkpoint_uri"] == version["checkpoint_uri"]
    assert sorted(p.name for p in blob.parent.iterdir()) == [registered]
    [event, _] = _get(model_api, "/audit", model=MODEL, action="version.register")["items"]
    assert event["details"]["source_uri"] == str(original)


def test_evaluation_evidence_reads_the_blob(
    model_api: ApiHarness, nano_checkpoint: Path, shapes_dataset: Path, tmp_path: Path
) -> None:
    original = tmp_path / "copy.pth"
    shutil.copyfile(nano_checkpoint, original)
    version = _register(model_api, original)
    original.unlink()
    policy = {"eval": {"dataset": str(shapes_dataset)}, "ap_floor": 0.0}
    response = model_api.client.put(
        f"/api/v1/models/{MODEL}/policy", json=policy, headers=model_api.headers(Role.approver)
    )
    assert response.status_code == 200, response.text
    promote = _post(model_api, f"/models/{MODEL}/versions/1/promotions", {"to": "staging"})
    assert promote.status_code == 202, promote.text
    # No cluster here: the promotion submits its evaluation, which Ray cannot take yet.
    jobs = wait_until(
        lambda: _get(model_api, "/evaluations")["items"],
        what="the promotion's evaluation job to be recorded",
        timeout_s=30,
        every_s=0.2,
    )
    spec = jobs[0]["spec"]
    assert (spec["checkpoint"], spec["checkpoint_sha256"]) == (
        version["checkpoint_uri"],
        version["checkpoint_sha256"],
    )
    # A caller naming the blob gets its bytes re-verified against the name by the job.
    direct = _post(
        model_api,
        "/evaluations",
        {
            "checkpoint": version["checkpoint_uri"],
            "dataset": str(shapes_dataset),
            "resolution": 128,
        },
        Role.operator,
    )
    assert direct.status_code == 503, direct.text
    newest = _get(model_api, "/evaluations")["items"]
    assert any(
        job["spec"]["checkpoint_sha256"] == version["checkpoint_sha256"]
        and job["created_by"] == "key:test-operator"
        for job in newest
    )
    wrong = _post(
        model_api,
        "/evaluations",
        {
            "checkpoint": version["checkpoint_uri"],
            "checkpoint_sha256": "0" * 64,
            "dataset": str(shapes_dataset),
            "resolution": 128,
        },
        Role.operator,
    )
    assert wrong.status_code == 422 and wrong.json()["field"] == "checkpoint_sha256"


def test_twenty_concurrent_promotions(model_api: ApiHarness, nano_checkpoint: Path) -> None:
    for _ in range(20):
        _register(model_api, nano_checkpoint)
    barrier = threading.Barrier(20)
    statuses: dict[int, int] = {}
    request_ids: dict[int, str] = {}

    def promote(version: int) -> None:
        request_ids[version] = f"race-{version}"
        barrier.wait()
        response = model_api.client.post(
            f"/api/v1/models/{MODEL}/versions/{version}/promotions",
            json={"to": "production", "reason": "race"},
            headers={**model_api.headers(Role.approver), "X-Request-ID": request_ids[version]},
        )
        statuses[version] = response.status_code

    threads = [threading.Thread(target=promote, args=(v,)) for v in range(1, 21)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # No 500s: a request either won the model's promotion slot (202) or found it taken (409).
    # A promotion without gates finishes in milliseconds, so later requests may win it again.
    assert set(statuses.values()) <= {202, 409} and len(statuses) == 20, statuses
    accepted = sorted(v for v, status in statuses.items() if status == 202)
    assert accepted

    def active() -> list[tuple[int, str]]:
        return [
            (p["version"], p["state"])
            for p in _get(model_api, f"/models/{MODEL}/promotions")["items"]
            if p["state"] in ("pending", "running")
        ]

    wait_until(
        active,
        until=lambda left: not left,
        what="every accepted promotion to end",
        timeout_s=60,
        every_s=0.2,
    )
    promotions = _get(model_api, f"/models/{MODEL}/promotions")["items"]
    assert sorted(p["version"] for p in promotions) == accepted
    assert {p["state"] for p in promotions} == {"applied"}
    last = max(promotions, key=lambda p: p["finished_at"])["version"]
    versions = _get(model_api, f"/models/{MODEL}/versions")["items"]
    stages = {v["version"]: v["stage"] for v in versions}
    assert [v for v, stage in stages.items() if stage == "production"] == [last]
    assert sorted(v for v, stage in stages.items() if stage == "archived") == sorted(
        set(accepted) - {last}
    )

    events = _get(model_api, "/audit", model=MODEL, action="promotion.", limit=1000)["items"]
    by_request: dict[str, list[str]] = {}
    for event in events:
        by_request.setdefault(event["request_id"], []).append(event["action"])
    assert set(by_request) == set(request_ids.values())
    for version, status in statuses.items():
        expected = (
            ["promotion.request", "promotion.apply"] if status == 202 else ["promotion.reject"]
        )
        assert by_request[request_ids[version]] == expected


def test_policy_validation(model_api: ApiHarness, shapes_dataset: Path) -> None:
    def put(body: Any) -> Any:
        return model_api.client.put(
            f"/api/v1/models/{MODEL}/policy", json=body, headers=model_api.headers(Role.approver)
        )

    unknown = put({"targets": [{"target": "no-such-cpu", "p95_sla_ms": 100}]})
    assert unknown.status_code == 422 and unknown.json()["field"] == "targets"
    no_eval = put({"ap_floor": 0.1})
    assert no_eval.status_code == 422 and "eval" in no_eval.json()["message"]
    no_check = put({"targets": [{"target": "cpu"}]})
    assert no_check.status_code == 422 and "max_p95_ratio" in no_check.json()["message"]
    operator = model_api.client.put(
        f"/api/v1/models/{MODEL}/policy", json={}, headers=model_api.headers(Role.operator)
    )
    assert operator.status_code == 403
    ok = put({"eval": {"dataset": str(shapes_dataset)}, "ap_floor": 0.05, "reason": "v1 policy"})
    assert ok.status_code == 200, ok.text
    policy = _get(model_api, f"/models/{MODEL}/policy")
    assert policy["ap_floor"] == 0.05 and len(policy["eval"]["fingerprint"]) == 64
    [event] = _get(model_api, "/audit", action="policy.set")["items"]
    assert event["reason"] == "v1 policy" and event["before"] is None


def test_audit_csv_export(model_api: ApiHarness, nano_checkpoint: Path) -> None:
    _register(model_api, nano_checkpoint)
    _promote_and_wait(model_api, 1)
    response = model_api.client.get(
        "/api/v1/audit", params={"model": MODEL, "format": "csv"}, headers=model_api.headers()
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["action"] for r in rows] == [
        "model.create",
        "version.register",
        "promotion.request",
        "promotion.apply",
    ]
    assert rows[3]["before"] == "production=none" and rows[3]["after"] == "production=v1"


def test_twenty_concurrent_requests_while_one_promotion_stays_active(
    model_api: ApiHarness, nano_checkpoint: Path, shapes_dataset: Path
) -> None:
    _register(model_api, nano_checkpoint)
    # The gates need an evaluation and the cluster is unreachable: the winner stays active.
    policy = {"eval": {"dataset": str(shapes_dataset)}, "ap_floor": 0.1}
    response = model_api.client.put(
        f"/api/v1/models/{MODEL}/policy", json=policy, headers=model_api.headers(Role.approver)
    )
    assert response.status_code == 200, response.text
    barrier = threading.Barrier(20)
    responses: list[Any] = []

    def promote() -> None:
        barrier.wait()
        responses.append(
            _post(model_api, f"/models/{MODEL}/versions/1/promotions", {"to": "production"})
        )

    threads = [threading.Thread(target=promote) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(r.status_code for r in responses) == [202] + [409] * 19
    [winner] = [r.json() for r in responses if r.status_code == 202]
    for refused in (r.json() for r in responses if r.status_code == 409):
        assert refused["code"] == "CONFLICT"
        assert refused["details"][0]["promotion_id"] == winner["id"]
        assert refused["message"].startswith(
            f"model '{MODEL}' already has promotion {winner['id']} "
        ), refused
        assert "(v1 to production); wait for it to finish" in refused["message"]
    assert _get(model_api, f"/promotions/{winner['id']}")["state"] == "running"
    promotions = _get(model_api, f"/models/{MODEL}/promotions")["items"]
    assert [p["id"] for p in promotions] == [winner["id"]]
    events = _get(model_api, "/audit", model=MODEL, action="promotion.", limit=100)["items"]
    assert sorted(e["action"] for e in events) == ["promotion.reject"] * 19 + ["promotion.request"]
