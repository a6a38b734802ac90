"""Access control: every route but health and the docs needs a key of the right role."""

from __future__ import annotations

import re
from typing import Any

from detrforge.registry.entities import Role
from fixtures_cluster import TINY_SPEC, ApiHarness

PUBLIC_PATHS = {"/health", "/ready", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}

# The least role each operation needs; a new route must be added here or the walk fails.
REQUIRED_ROLE: dict[tuple[str, str], Role | None] = {
    ("get", "/health"): None,
    ("get", "/ready"): None,
    ("get", "/api/v1/whoami"): Role.viewer,
    ("post", "/api/v1/keys"): Role.admin,
    ("get", "/api/v1/keys"): Role.admin,
    ("delete", "/api/v1/keys/{key_id}"): Role.admin,
    ("post", "/api/v1/finetune-jobs"): Role.operator,
    ("get", "/api/v1/finetune-jobs"): Role.viewer,
    ("get", "/api/v1/finetune-jobs/{job_id}"): Role.viewer,
    ("get", "/api/v1/finetune-jobs/{job_id}/logs"): Role.viewer,
    ("post", "/api/v1/finetune-jobs/{job_id}/cancel"): Role.operator,
    ("get", "/api/v1/jobs"): Role.viewer,
    ("get", "/api/v1/jobs/{job_id}"): Role.viewer,
    ("get", "/api/v1/jobs/{job_id}/logs"): Role.viewer,
    ("post", "/api/v1/jobs/{job_id}/cancel"): Role.operator,
    ("post", "/api/v1/evaluations"): Role.operator,
    ("get", "/api/v1/evaluations"): Role.viewer,
    ("get", "/api/v1/evaluations/{job_id}"): Role.viewer,
    ("get", "/api/v1/evaluations/{job_id}/result"): Role.viewer,
    ("post", "/api/v1/benchmarks"): Role.operator,
    ("get", "/api/v1/benchmarks"): Role.viewer,
    ("get", "/api/v1/benchmarks/{job_id}"): Role.viewer,
    ("post", "/api/v1/hardware-targets"): Role.approver,
    ("get", "/api/v1/hardware-targets"): Role.viewer,
    ("get", "/api/v1/hardware-targets/{name}"): Role.viewer,
    ("patch", "/api/v1/hardware-targets/{name}"): Role.approver,
    ("delete", "/api/v1/hardware-targets/{name}"): Role.approver,
    ("get", "/api/v1/benchmark-records"): Role.viewer,
    ("get", "/api/v1/benchmark-records/summary"): Role.viewer,
    ("post", "/api/v1/models"): Role.operator,
    ("get", "/api/v1/models"): Role.viewer,
    ("get", "/api/v1/models/{name}"): Role.viewer,
    ("put", "/api/v1/models/{name}/policy"): Role.approver,
    ("get", "/api/v1/models/{name}/policy"): Role.viewer,
    ("post", "/api/v1/models/{name}/versions"): Role.operator,
    ("get", "/api/v1/models/{name}/versions"): Role.viewer,
    ("get", "/api/v1/models/{name}/versions/{version}"): Role.viewer,
    ("get", "/api/v1/models/{name}/versions/{version}/variants"): Role.viewer,
    ("post", "/api/v1/models/{name}/versions/{version}/optimize"): Role.operator,
    ("get", "/api/v1/models/{name}/aliases/{alias}"): Role.viewer,
    ("post", "/api/v1/models/{name}/versions/{version}/promotions"): Role.operator,
    ("get", "/api/v1/models/{name}/promotions"): Role.viewer,
    ("get", "/api/v1/promotions/{promotion_id}"): Role.viewer,
    ("post", "/api/v1/models/{name}/rollback"): Role.approver,
    ("get", "/api/v1/audit"): Role.viewer,
    ("post", "/api/v1/sweeps/{job_id}/trials/{trial_id}/register"): Role.operator,
    ("post", "/api/v1/sweeps"): Role.operator,
    ("get", "/api/v1/sweeps"): Role.viewer,
    ("get", "/api/v1/sweeps/{job_id}"): Role.viewer,
    ("get", "/api/v1/sweeps/{job_id}/result"): Role.viewer,
    ("get", "/api/v1/sweeps/{job_id}/pareto.png"): Role.viewer,
    ("post", "/api/v1/sweeps/{job_id}/cancel"): Role.operator,
}
_WEAKER = {Role.operator: Role.viewer, Role.approver: Role.operator, Role.admin: Role.approver}


def _operations(api: ApiHarness) -> list[tuple[str, str]]:
    paths = api.client.app.openapi()["paths"]  # type: ignore[attr-defined]
    return [(method, path) for path, item in paths.items() for method in item]


def _call(api: ApiHarness, method: str, path: str, headers: dict[str, str]) -> Any:
    url = re.sub(r"\{[^}]+\}", "x", path)
    return api.client.request(method.upper(), url, headers=headers)


def test_every_route_makes_an_authorization_decision(offline_api: ApiHarness) -> None:
    operations = _operations(offline_api)
    assert set(operations) == set(REQUIRED_ROLE), "a route was added without a role in this test"
    for method, path in operations:
        response = _call(offline_api, method, path, headers={})
        if REQUIRED_ROLE[(method, path)] is None:
            assert path in PUBLIC_PATHS
            # Readiness answers without a key; here it is 503 because no Ray head listens.
            assert response.status_code == (503 if path == "/ready" else 200)
        else:
            assert response.status_code == 401, (method, path, response.text)


def test_every_route_refuses_a_weaker_role(offline_api: ApiHarness) -> None:
    for (method, path), role in REQUIRED_ROLE.items():
        if role is None or role == Role.viewer:
            continue
        weaker = offline_api.headers(_WEAKER[role])
        response = _call(offline_api, method, path, headers=weaker)
        assert response.status_code == 403, (method, path, response.text)
        assert role.value in response.json()["message"]


def test_no_key_is_401(offline_api: ApiHarness) -> None:
    response = offline_api.client.get("/api/v1/finetune-jobs")
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHENTICATED"
    assert "Authorization: Bearer" in response.json()["message"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_bad_key_is_401(offline_api: ApiHarness) -> None:
    response = offline_api.client.get(
        "/api/v1/finetune-jobs", headers={"Authorization": "Bearer dfk_not-a-real-key"}
    )
    assert response.status_code == 401
    assert response.json()["message"] == "invalid or revoked API key"


def test_viewer_cannot_submit(offline_api: ApiHarness, synth_ds: Any) -> None:
    response = offline_api.submit({**TINY_SPEC, "dataset": synth_ds.root}, role=Role.viewer)
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "PERMISSION_DENIED"
    assert "operator" in body["message"]


def test_viewer_can_read_and_health_is_open(offline_api: ApiHarness) -> None:
    listing = offline_api.client.get(
        "/api/v1/finetune-jobs", headers=offline_api.headers(Role.viewer)
    )
    assert listing.status_code == 200
    assert listing.json() == {"items": [], "total": 0, "limit": 50, "offset": 0}
    assert offline_api.client.get("/health").json()["status"] == "ok"


def test_key_lifecycle_over_the_api(offline_api: ApiHarness) -> None:
    created = offline_api.client.post(
        "/api/v1/keys", json={"name": "ci", "role": "operator"}, headers=offline_api.headers()
    )
    assert created.status_code == 201
    secret = created.json()["key"]
    assert secret.startswith("dfk_")
    who = offline_api.client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert who.json()["role"] == "operator"
    listed = offline_api.client.get("/api/v1/keys", headers=offline_api.headers()).json()["items"]
    assert all("key" not in item for item in listed)
    revoked = offline_api.client.delete(
        f"/api/v1/keys/{created.json()['id']}", headers=offline_api.headers()
    )
    assert revoked.status_code == 200
    again = offline_api.client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert again.status_code == 401


def test_operator_cannot_create_keys(offline_api: ApiHarness) -> None:
    response = offline_api.client.post(
        "/api/v1/keys",
        json={"name": "x", "role": "admin"},
        headers=offline_api.headers(Role.operator),
    )
    assert response.status_code == 403
