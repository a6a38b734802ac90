"""The OpenAPI document is the contract: schemathesis fuzzes every operation with an admin key.

The API runs in-process and cluster-less (a Ray address where nothing listens, SQLite, file
artifacts): a generated job submission is refused for its input (422) or reaches the launcher
and is refused as 503 CLUSTER_ERROR; both are declared. Every response must be no server error,
carry a declared status code and content type, and match its declared schema. Generation is
derandomized, so a run is reproducible, and sized to at least 1,000 cases.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from detrforge.api.main import build_services, create_app
from detrforge.registry.entities import Role
from fixtures_cluster import free_port, make_settings

CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]
# Per operation: inputs the schema allows, then inputs it forbids (which must be a declared 4xx).
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 10}
MIN_CASES = 1000


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

    def fuzz(self, operation: Any, mode: GenerationMode, headers: dict[str, str]) -> None:
        @settings(
            max_examples=EXAMPLES[mode],
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
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


def test_every_operation_honours_the_openapi_document(tmp_path: Path) -> None:
    app_settings = make_settings(
        tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'registry.db'}",
        ray_address=f"http://127.0.0.1:{free_port()}",
        artifact_root=None,
    )
    services = build_services(app_settings)
    _, admin_key = services.keys.create(name="contract-admin", role=Role.admin)
    headers = {"Authorization": f"Bearer {admin_key}"}
    app = create_app(app_settings, services=services)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]

    tally = Tally()
    started = time.monotonic()
    for operation in operations:
        for mode in EXAMPLES:
            tally.fuzz(operation, mode, headers)
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
    assert len(operations) == documented == 46
