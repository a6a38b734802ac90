"""The OpenAPI document is the contract: schemathesis fuzzes every operation with an admin key.

The API runs in-process and cluster-less (a Ray address where nothing listens, SQLite, file
artifacts): a generated job submission is refused for its input (422) or reaches the launcher
and is refused as 503 CLUSTER_ERROR; both are declared. Every response must be no server error,
carry a declared status code and content type, and match its declared schema. Generation is
derandomized, so a run is reproducible, and sized to at least 1,000 cases.

Random names rarely exist, so besides the generated cases every operation is also run against
seeded resources (a model, a hardware target, a fine-tune job and a sweep that failed to
submit, the admin key) and every submission with a valid body on a real dataset, so success
and conflict answers are checked against the schema too.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from detrforge.api.deps import Services
from detrforge.api.main import build_services, create_app
from detrforge.detector.data import DatasetInfo
from detrforge.detector.specs import parse_spec
from detrforge.detector.sweep_specs import SweepSpec
from detrforge.registry.entities import JobState, Role
from fixtures_cluster import TINY_SPEC, free_port, make_settings

# negative_data_rejection: an input the schema forbids must be refused, so every constraint the
# schema states is one the server enforces.
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Per operation: inputs the schema allows, then inputs it forbids (which must be a declared 4xx).
EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 8}
SEEDED_EXAMPLES = 4
MIN_CASES = 800


def _checks(response: Any) -> list[Any]:
    """Every check; a 503 is no server error where it is the declared "cluster unavailable"
    answer (status_code_conformance still requires the route to declare it)."""
    if response.status_code == 503 and _is_declared_unavailable(response):
        return CONFORMANCE
    return [schemathesis.checks.not_a_server_error, *CONFORMANCE]


def _is_declared_unavailable(response: Any) -> bool:
    body = response.json()
    return body.get("code") == "CLUSTER_ERROR" or body.get("status") == "not ready"


@dataclass
class Tally:
    """Cases run and distinct failures, per operation."""

    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    seconds: Counter[str] = field(default_factory=Counter)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)

    def fuzz(
        self,
        operation: Any,
        mode: GenerationMode,
        headers: dict[str, str],
        *,
        examples: int,
        **fixed: Any,
    ) -> None:
        @settings(
            max_examples=examples,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode, **fixed))
        def run(case: Any) -> None:
            self.cases[operation.label] += 1
            # Recorded, not raised: Hypothesis would stop at the first and spend minutes
            # shrinking it; the report below lists every distinct failure instead.
            try:
                started = time.monotonic()
                response = case.call(headers=headers)
                self.seconds[operation.label] += time.monotonic() - started
                self.statuses[response.status_code] += 1
                case.validate_response(response, checks=_checks(response))
            except FailureGroup as group:
                for failure in group.exceptions:
                    self.failures.setdefault((operation.label, failure.title), str(group))
            except Failure as failure:
                self.failures.setdefault((operation.label, failure.title), str(failure))

        try:
            run()
        except Unsatisfiable:
            # Nothing to negate: the operation takes no parameters and no body (/health).
            assert mode is GenerationMode.NEGATIVE, operation.label


@dataclass(frozen=True)
class Seeded:
    """Resources that exist before fuzzing, and a valid body per submission route."""

    path_values: dict[str, dict[str, str]]
    bodies: dict[str, dict[str, Any]]

    def fixed(self, operation: Any) -> dict[str, Any]:
        """The seeded path parameters and body for ``operation`` (empty when none applies)."""
        fixed: dict[str, Any] = {}
        names = re.findall(r"{(\w+)}", operation.path)
        resource = operation.path.removeprefix("/api/v1/").split("/", 1)[0]
        values = self.path_values.get(resource, {})
        if names and all(name in values for name in names):
            fixed["path_parameters"] = {name: values[name] for name in names}
        if operation.method.upper() == "POST" and operation.path in self.bodies:
            fixed["body"] = self.bodies[operation.path]
            fixed["media_type"] = "application/json"
        return fixed


def _seed(services: Services, headers: dict[str, str], admin_id: str, dataset: str) -> Seeded:
    client = TestClient(create_app(services.settings, services=services))

    def post(path: str, body: dict[str, Any], status: int) -> dict[str, Any]:
        response = client.post(f"/api/v1{path}", json=body, headers=headers)
        assert response.status_code == status, response.text
        return dict(response.json())

    post("/hardware-targets", {"name": "contract-cpu", "resources": {"CPU": 1}}, 201)
    post("/models", {"name": "contract-model"}, 201)
    finetune = {**TINY_SPEC, "dataset": dataset}
    sweep = {"dataset": dataset, "base": {"num_queries": 50}, "target": "contract-cpu"}
    # Valid, so they reach the launcher; there is no cluster: 503, the job recorded as FAILED.
    assert post("/finetune-jobs", finetune, 503)["code"] == "CLUSTER_ERROR"
    assert post("/sweeps", sweep, 503)["code"] == "CLUSTER_ERROR"

    def job_id(path: str) -> str:
        listing = client.get(f"/api/v1{path}", headers=headers).json()
        assert [job["state"] for job in listing["items"]] == ["FAILED"]
        return str(listing["items"][0]["id"])

    finetune_id = job_id("/finetune-jobs")
    # A sweep asks the cluster for capacity before it records a job: record one that never ran.
    sweep_spec = parse_spec(SweepSpec, {**sweep, "target_resources": {"CPU": 1}})
    sweep_job = services.jobs.job_store.create(
        kind="sweep",
        spec=sweep_spec.model_dump(mode="json"),
        created_by="contract-admin",
        dataset_fingerprint=None,
    )
    services.jobs.job_store.update(sweep_job.id, state=JobState.FAILED, error="never started")
    sweep_id = job_id("/sweeps")
    return Seeded(
        path_values={
            "models": {"name": "contract-model", "version": "1", "alias": "production"},
            "hardware-targets": {"name": "contract-cpu"},
            "finetune-jobs": {"job_id": finetune_id},
            "jobs": {"job_id": finetune_id},
            "evaluations": {"job_id": finetune_id},
            "benchmarks": {"job_id": finetune_id},
            "sweeps": {"job_id": sweep_id, "trial_id": "trial-0"},
            "keys": {"key_id": admin_id},
        },
        bodies={
            "/api/v1/finetune-jobs": finetune,
            "/api/v1/sweeps": sweep,
            "/api/v1/sweeps/{job_id}/trials/{trial_id}/register": {"model": "contract-model"},
        },
    )


def test_every_operation_honours_the_openapi_document(
    tmp_path: Path, synth_ds: DatasetInfo
) -> None:
    app_settings = make_settings(
        tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'registry.db'}",
        ray_address=f"http://127.0.0.1:{free_port()}",
        artifact_root=None,
    )
    services = build_services(app_settings)
    admin, admin_key = services.keys.create(name="contract-admin", role=Role.admin)
    headers = {"Authorization": f"Bearer {admin_key}"}
    app = create_app(app_settings, services=services)
    seeded = _seed(services, headers, admin.id, str(synth_ds.root))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]

    tally = Tally()
    started = time.monotonic()
    # Deletions of seeded resources last, so every other operation still finds them.
    by_deletion = sorted(operations, key=lambda operation: operation.method.upper() == "DELETE")
    for operation in by_deletion:
        if fixed := seeded.fixed(operation):
            tally.fuzz(
                operation, GenerationMode.POSITIVE, headers, examples=SEEDED_EXAMPLES, **fixed
            )
    for operation in operations:
        for mode, examples in EXAMPLES.items():
            tally.fuzz(operation, mode, headers, examples=examples)
    elapsed = time.monotonic() - started

    total = sum(tally.cases.values())
    print(
        f"\nschemathesis: {total} cases over {len(operations)} operations, "
        f"{len(tally.failures)} failures ({elapsed:.0f} s; statuses {dict(tally.statuses)})"
    )
    slowest = ", ".join(f"{label} {s:.0f} s" for label, s in tally.seconds.most_common(3))
    print(f"slowest: {slowest}")
    for (label, title), report in sorted(tally.failures.items()):
        print(f"--- {label}: {title}\n{report[:1500]}")
    assert not tally.failures, f"{len(tally.failures)} contract failures: {sorted(tally.failures)}"
    assert total >= MIN_CASES
    documented = sum(len(methods) for methods in schema.raw_schema["paths"].values())
    assert len(operations) == documented == 52
