"""``/api/v1/jobs``: jobs of every kind in one list, one job, its log tail, cancel (what the
console's Jobs page reads), on SQLite and PostgreSQL."""

from __future__ import annotations

from detrforge.registry.entities import JobState, Role
from fixtures_cluster import ApiHarness


def test_jobs_of_every_kind_in_one_list_with_logs_and_cancel(offline_api: ApiHarness) -> None:
    store = offline_api.client.app.state.services.jobs.job_store  # type: ignore[attr-defined]
    made = {
        kind: store.create(
            kind=kind, spec={}, created_by="key:test-operator", dataset_fingerprint=None
        )
        for kind in ("finetune", "evaluate", "benchmark", "sweep")
    }
    store.update(made["evaluate"].id, state=JobState.SUCCEEDED)
    viewer = offline_api.headers(Role.viewer)

    def listing(**params: str) -> list[tuple[str, str]]:
        response = offline_api.client.get("/api/v1/jobs", params=params, headers=viewer)
        assert response.status_code == 200, response.text
        return [(job["kind"], job["state"]) for job in response.json()["items"]]

    assert sorted(listing()) == sorted(
        [
            ("finetune", "PENDING"),
            ("evaluate", "SUCCEEDED"),
            ("benchmark", "PENDING"),
            ("sweep", "PENDING"),
        ]
    )
    assert listing(kind="evaluate") == [("evaluate", "SUCCEEDED")]
    assert listing(kind="sweep", state="SUCCEEDED") == []
    bad = offline_api.client.get("/api/v1/jobs", params={"kind": "train"}, headers=viewer)
    assert bad.status_code == 422 and bad.json()["field"] == "kind"

    sweep = made["sweep"].id
    shown = offline_api.client.get(f"/api/v1/jobs/{sweep}", headers=viewer).json()
    assert (shown["id"], shown["kind"]) == (sweep, "sweep")
    logs = offline_api.client.get(f"/api/v1/jobs/{sweep}/logs", params={"tail": 5}, headers=viewer)
    assert (logs.status_code, logs.text) == (200, "")  # never submitted: no log yet
    refused = offline_api.client.post(f"/api/v1/jobs/{sweep}/cancel", headers=viewer)
    assert refused.status_code == 403
    cancelled = offline_api.client.post(
        f"/api/v1/jobs/{sweep}/cancel", headers=offline_api.headers(Role.operator)
    )
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "CANCELLING"
    gone = offline_api.client.get("/api/v1/jobs/ft-000000000000", headers=viewer)
    assert gone.status_code == 404
