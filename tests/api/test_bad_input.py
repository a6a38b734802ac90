"""Bad input never reaches a 500: bounded parameters, request limits, strict bodies, one error
shape for every status, the last admin key, control characters, the offline docs.

Routes and parameters are read from the app itself, so a new route is covered without edits here.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from detrforge.platform.limits import (
    MAX_CLASS_NAME_LENGTH,
    MAX_CLASS_NAMES,
    MAX_DESCRIPTION_LENGTH,
    MAX_JSON_DEPTH,
    MAX_NAME_LENGTH,
    MAX_REASON_LENGTH,
)
from detrforge.registry.entities import Role
from fixtures_cluster import TINY_SPEC, ApiHarness, free_port, harness, make_settings
from fixtures_db import _BACKENDS, POSTGRES_URL_VARIABLE, _fresh_postgres_database

ERROR_KEYS = {"code", "message", "field", "details"}


@pytest.fixture(scope="module", params=_BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One offline API per backend for the whole module (starting one costs seconds); tests
    here only add rows, so they do not disturb each other. A ``shelf`` model exists."""
    home = tmp_path_factory.mktemp("bad-input")
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{home / 'registry.db'}"])
    else:
        urls = _fresh_postgres_database(os.environ[POSTGRES_URL_VARIABLE])
    url = next(urls)
    settings = make_settings(
        home / "home",
        database_url=url,
        ray_address=f"http://127.0.0.1:{free_port()}",
        artifact_root=None,
    )
    for harnessed in harness(settings):
        created = harnessed.client.post(
            "/api/v1/models", json={"name": "shelf"}, headers=harnessed.headers()
        )
        assert created.status_code == 201, created.text
        yield harnessed
    next(urls, None)  # drops the PostgreSQL database


HUGE_INTEGERS = [2**63, 10**30, -1]


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = dict(response.json())
    assert set(body) == ERROR_KEYS, body
    assert body["code"] == code, body
    return body


def _is_integer(schema: dict[str, Any]) -> bool:
    options = schema.get("anyOf", [schema])
    return any(option.get("type") == "integer" for option in options)


def _int_parameters(api: ApiHarness) -> list[tuple[str, str, str, str]]:
    """(method, path, parameter, 'path' or 'query') for every integer parameter of every
    operation, as the OpenAPI document (generated from the routes) declares them."""
    found = []
    paths = api.client.app.openapi()["paths"]  # type: ignore[attr-defined]
    for path, item in paths.items():
        for method, operation in item.items():
            for param in operation.get("parameters", []):
                if param["in"] in ("path", "query") and _is_integer(param["schema"]):
                    found.append((method.upper(), path, param["name"], param["in"]))
    return found


def _url(path: str, name: str, value: int, where: str) -> str:
    url = re.sub(r"\{([^}]+)\}", lambda m: str(value) if m.group(1) == name else "x", path)
    return url if where == "path" else f"{url}?{name}={value}"


def test_every_integer_parameter_is_bounded(api: ApiHarness) -> None:
    parameters = _int_parameters(api)
    names = {name for _, _, name, _ in parameters}
    assert {"limit", "offset", "version", "tail"} <= names, names
    for method, path, name, where in parameters:
        for value in HUGE_INTEGERS:
            url = _url(path, name, value, where)
            kwargs: dict[str, Any] = {"headers": api.headers()}
            if method in {"POST", "PUT", "PATCH"}:
                kwargs["json"] = {}
            response = api.client.request(method, url, **kwargs)
            body = _error(response, 422, "INVALID_REQUEST")
            assert name in {d["field"] for d in body["details"]}, (method, url, body)


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
@pytest.mark.parametrize("path", ["/api/v1/audit", "/api/v1/benchmark-records"])
def test_times_beyond_utc_are_422(api: ApiHarness, path: str, value: str) -> None:
    response = api.client.get(path, params={"since": value}, headers=api.headers())
    assert _error(response, 422, "INVALID_REQUEST")["field"] == "since"


@pytest.mark.parametrize("value", ["-3.35990861420118e-59", "1700000000", "2026-01-01", "now"])
@pytest.mark.parametrize("path", ["/api/v1/audit", "/api/v1/benchmark-records"])
def test_a_time_that_is_not_iso_8601_is_422(api: ApiHarness, path: str, value: str) -> None:
    # A number would otherwise be read as seconds since 1970, a bare date as midnight.
    response = api.client.get(path, params={"until": value}, headers=api.headers())
    body = _error(response, 422, "INVALID_REQUEST")
    assert body["field"] == "until"
    assert "ISO 8601" in response.text


def test_an_iso_time_is_accepted(api: ApiHarness) -> None:
    for value in ("2026-01-01T00:00:00Z", "2026-01-01 00:00:00+02:00"):
        response = api.client.get(
            "/api/v1/benchmark-records", params={"since": value}, headers=api.headers()
        )
        assert response.status_code == 200, response.text
        assert response.json()["items"] == []


def test_query_text_is_bounded(api: ApiHarness) -> None:
    response = api.client.get(
        "/api/v1/audit", params={"actor": "a" * 10_000}, headers=api.headers()
    )
    assert _error(response, 422, "INVALID_REQUEST")["field"] == "actor"


# -- request limits ------------------------------------------------------------------------------


def _big_body() -> bytes:
    limit = 1024 * 1024  # Settings.max_request_bytes' default
    return b'{"dataset": "' + b"x" * limit + b'"}'


def test_body_over_the_limit_is_413_with_content_length(api: ApiHarness) -> None:
    response = api.client.post(
        "/api/v1/finetune-jobs",
        content=_big_body(),
        headers={**api.headers(), "Content-Type": "application/json"},
    )
    body = _error(response, 413, "PAYLOAD_TOO_LARGE")
    assert "1048576" in body["message"] and "DETRFORGE_MAX_REQUEST_BYTES" in body["message"]


def test_body_over_the_limit_is_413_when_streamed(api: ApiHarness) -> None:
    data = _big_body()

    def chunks() -> Any:
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    response = api.client.post(
        "/api/v1/models",
        content=chunks(),
        headers={**api.headers(), "Content-Type": "application/json"},
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    _error(response, 413, "PAYLOAD_TOO_LARGE")


def test_streamed_body_is_cut_off_at_the_limit() -> None:
    from detrforge.api.limits import RequestLimitsMiddleware

    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append("app")

    middleware = RequestLimitsMiddleware(app, max_bytes=100)
    messages = [{"type": "http.request", "body": b"[" + b"1," * 30, "more_body": True}] * 10
    received = 0

    async def receive() -> Any:
        nonlocal received
        received += 1
        return messages[received - 1]

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": []}
    asyncio.run(middleware(scope, receive, send))
    assert reached == []
    assert received == 2  # 61 + 61 bytes passed 100: the rest is never read
    assert sent[0]["status"] == 413


def test_malformed_json_is_400_in_the_error_shape(api: ApiHarness) -> None:
    for path in ("/api/v1/models", "/api/v1/finetune-jobs"):
        response = api.client.post(
            path,
            content=b'{"name": ',
            headers={**api.headers(), "Content-Type": "application/json"},
        )
        assert "not valid JSON" in _error(response, 400, "MALFORMED_REQUEST")["message"]


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_400(api: ApiHarness, token: bytes) -> None:
    response = api.client.post(
        "/api/v1/finetune-jobs",
        content=b'{"dataset": "d", "resources_per_worker": {"CPU": ' + token + b"}}",
        headers={**api.headers(), "Content-Type": "application/json"},
    )
    assert "NaN or Infinity" in _error(response, 400, "MALFORMED_REQUEST")["message"]


@pytest.mark.parametrize("path", ["/api/v1/models", "/api/v1/sweeps", "/api/v1/keys"])
def test_deeply_nested_json_is_422(api: ApiHarness, path: str) -> None:
    depth = MAX_JSON_DEPTH + 1
    nested = b'{"name": ' + b"[" * depth + b"]" * depth + b"}"
    response = api.client.post(
        path, content=nested, headers={**api.headers(), "Content-Type": "application/json"}
    )
    assert f"deeper than {MAX_JSON_DEPTH}" in _error(response, 422, "INVALID_REQUEST")["message"]
    # A parser-crashing depth is refused the same way, not as a 500.
    deep = b"[" * 100_000 + b"]" * 100_000
    response = api.client.post(
        path, content=deep, headers={**api.headers(), "Content-Type": "application/json"}
    )
    _error(response, 422, "INVALID_REQUEST")


def test_non_json_body_is_415(api: ApiHarness) -> None:
    response = api.client.post(
        "/api/v1/models",
        content=b"name=x",
        headers={**api.headers(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert "application/json" in _error(response, 415, "UNSUPPORTED_MEDIA_TYPE")["message"]


def test_unknown_route_and_wrong_method_use_the_error_shape(api: ApiHarness) -> None:
    body = _error(api.client.get("/api/v1/nope"), 404, "NOT_FOUND")
    assert "/api/v1/nope" in body["message"]
    response = api.client.put("/api/v1/models", headers=api.headers())
    body = _error(response, 405, "METHOD_NOT_ALLOWED")
    assert "PUT" in body["message"] and "POST" in response.headers["allow"]
    assert response.headers["allow"] in body["message"]


def test_openapi_declares_the_error_statuses(api: ApiHarness) -> None:
    document = api.client.get("/openapi.json").json()
    assert "ErrorBody" in document["components"]["schemas"]
    for path, item in document["paths"].items():
        # The open probes answer no 401/403/404, but the request limits apply to them too.
        public = path in {"/health", "/ready"}
        expected = {"400", "413", "415", "422"} | (set() if public else {"401", "403", "404"})
        for method, operation in item.items():
            declared = set(operation["responses"])
            assert expected <= declared, (method, path)
            ref = operation["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorBody")


# -- strict types and lengths --------------------------------------------------------------------


STRICT_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("post", "/api/v1/models", {"name": "m", "description": 5}, "description"),
    ("post", "/api/v1/models", {"name": 7}, "name"),
    ("post", "/api/v1/keys", {"name": ["ops"]}, "name"),
    ("post", "/api/v1/models/shelf/versions", {"checkpoint": "c.pth", "class_names": [{"a": 1}]},
     "class_names.0"),
    ("post", "/api/v1/models/shelf/versions", {"checkpoint": "c.pth", "resolution": "128"},
     "resolution"),
    ("post", "/api/v1/models/shelf/versions/1/promotions", {"reason": 5}, "reason"),
    ("post", "/api/v1/models/shelf/rollback", {"reason": []}, "reason"),
    ("put", "/api/v1/models/shelf/policy", {"ap_floor": "0.5"}, "ap_floor"),
    ("put", "/api/v1/models/shelf/policy", {"reason": {"x": 1}}, "reason"),
    ("post", "/api/v1/hardware-targets", {"name": "t", "resources": {"CPU": 1}, "batch_size": "1"},
     "batch_size"),
    ("post", "/api/v1/hardware-targets", {"name": "t", "resources": {"CPU": "1"}}, "resources.CPU"),
    ("post", "/api/v1/finetune-jobs", {**TINY_SPEC, "dataset": "d", "epochs": "3"}, "epochs"),
    ("post", "/api/v1/finetune-jobs", {**TINY_SPEC, "dataset": "d", "use_gpu": "true"}, "use_gpu"),
    ("post", "/api/v1/finetune-jobs", {**TINY_SPEC, "dataset": 5}, "dataset"),
    ("post", "/api/v1/finetune-jobs",
     {**TINY_SPEC, "dataset": "d", "resources_per_worker": {"CPU": "nan"}},
     "resources_per_worker.CPU"),
    ("post", "/api/v1/finetune-jobs",
     {**TINY_SPEC, "dataset": "d", "resources_per_worker": {"CPU": 1e308}},
     "resources_per_worker"),
    ("post", "/api/v1/finetune-jobs",
     {**TINY_SPEC, "dataset": "d", "resources_per_worker": {"CPU": 0}}, "resources_per_worker"),
    ("post", "/api/v1/finetune-jobs", {**TINY_SPEC, "dataset": "d", "num_workers": 10**6},
     "num_workers"),
    ("post", "/api/v1/sweeps", {"dataset": "d", "target": "t", "num_samples": "2"},
     "num_samples"),
    ("post", "/api/v1/evaluations", {"checkpoint": "c.pth", "dataset": "d", "resolution": 128.0},
     "resolution"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "field"), STRICT_CASES)
def test_wrong_types_are_422_never_coerced(
    api: ApiHarness, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    response = api.client.request(method.upper(), path, json=body, headers=api.headers())
    assert response.status_code == 422, response.text
    assert set(response.json()) == ERROR_KEYS
    assert response.json()["field"] == field, response.json()


LENGTH_CASES: list[tuple[str, dict[str, Any], str, int]] = [
    ("/api/v1/models", {"name": "m", "description": "d" * (MAX_DESCRIPTION_LENGTH + 1)},
     "description", MAX_DESCRIPTION_LENGTH),
    ("/api/v1/models", {"name": "m" * (MAX_NAME_LENGTH + 1)}, "name", MAX_NAME_LENGTH),
    ("/api/v1/keys", {"name": "k" * (MAX_NAME_LENGTH + 1)}, "name", MAX_NAME_LENGTH),
    ("/api/v1/models/shelf/versions",
     {"checkpoint": "c.pth", "class_names": ["c"] * (MAX_CLASS_NAMES + 1)},
     "class_names", MAX_CLASS_NAMES),
    ("/api/v1/models/shelf/versions",
     {"checkpoint": "c.pth", "class_names": ["c" * (MAX_CLASS_NAME_LENGTH + 1)]},
     "class_names.0", MAX_CLASS_NAME_LENGTH),
    ("/api/v1/models/shelf/rollback", {"reason": "r" * (MAX_REASON_LENGTH + 1)}, "reason",
     MAX_REASON_LENGTH),
    ("/api/v1/models/shelf/versions/1/promotions", {"reason": "r" * (MAX_REASON_LENGTH + 1)},
     "reason", MAX_REASON_LENGTH),
    ("/api/v1/sweeps/s/trials/t/register",
     {"model": "shelf", "description": "d" * (MAX_DESCRIPTION_LENGTH + 1)}, "description",
     MAX_DESCRIPTION_LENGTH),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "field", "limit"), LENGTH_CASES)
def test_text_and_lists_are_bounded(
    api: ApiHarness, path: str, body: dict[str, Any], field: str, limit: int
) -> None:
    response = api.client.post(path, json=body, headers=api.headers())
    body = _error(response, 422, "INVALID_REQUEST")
    assert body["field"] == field
    assert str(limit) in body["message"]


NAME_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("/api/v1/keys", {"name": "ops\x1b[31mred"}, "name"),
    ("/api/v1/keys", {"name": "ops\nroot"}, "name"),
    ("/api/v1/models", {"name": "a\x00b"}, "name"),
    ("/api/v1/models", {"name": "ok", "description": "say \x1b[2J"}, "description"),
    ("/api/v1/hardware-targets", {"name": "t\x07", "resources": {"CPU": 1}}, "name"),
    ("/api/v1/sweeps/s/trials/t/register", {"model": "shelf\x9b"}, "model"),
    ("/api/v1/models/shelf/rollback", {"reason": "\x1b]0;title\x07"}, "reason"),
]


@pytest.mark.parametrize(("path", "body", "field"), NAME_CASES)
def test_control_characters_are_refused(
    api: ApiHarness, path: str, body: dict[str, Any], field: str
) -> None:
    response = api.client.post(path, json=body, headers=api.headers())
    assert _error(response, 422, "INVALID_REQUEST")["field"] == field


def test_line_breaks_are_fine_in_descriptions(api: ApiHarness) -> None:
    response = api.client.post(
        "/api/v1/models",
        json={"name": "multi", "description": "line one\nline two\ttabbed"},
        headers=api.headers(),
    )
    assert response.status_code == 201, response.text
    assert response.json()["description"] == "line one\nline two\ttabbed"


def test_class_names_are_stored_as_given(api: ApiHarness) -> None:
    # The case the coercion used to hit: a list of objects is refused, a list of text is kept.
    response = api.client.post("/api/v1/models", json={"name": "m2"}, headers=api.headers())
    assert response.status_code == 201
    response = api.client.post(
        "/api/v1/models/m2/versions",
        json={"checkpoint": "c.pth", "class_names": [1]},
        headers=api.headers(),
    )
    assert _error(response, 422, "INVALID_REQUEST")["field"] == "class_names.0"


# -- capacity --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"num_workers": 4, "resources_per_worker": {"CPU": 1}}, "num_workers"),
        ({"num_workers": 4, "resources_per_worker": {"CPU": 0.75}}, "num_workers"),
        ({"num_workers": 1, "resources_per_worker": {"CPU": 3}}, "resources_per_worker"),
        ({"num_workers": 1, "resources_per_worker": {"CPU": 1}, "use_gpu": True},
         "resources_per_worker"),
    ],
)  # fmt: skip
def test_finetune_that_does_not_fit_the_cluster_is_422_before_intake(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch, changes: dict[str, Any], field: str
) -> None:
    launcher = api.client.app.state.services.jobs.launcher  # type: ignore[attr-defined]
    monkeypatch.setattr(launcher, "node_resources", lambda: [{"CPU": 2.0}, {"CPU": 1.0}])
    # The dataset does not exist: the capacity check answers before the intake would.
    spec = {**TINY_SPEC, "dataset": "/nonexistent/ds", **changes}
    response = api.submit(spec)
    body = _error(response, 422, "RESOURCE_UNAVAILABLE")
    assert body["field"] == field


def test_finetune_that_fits_goes_on_to_the_dataset(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher = api.client.app.state.services.jobs.launcher  # type: ignore[attr-defined]
    monkeypatch.setattr(launcher, "node_resources", lambda: [{"CPU": 2.0}, {"CPU": 1.0}])
    spec = {**TINY_SPEC, "dataset": "/nonexistent/ds", "num_workers": 3}
    response = api.submit(spec)
    # Past the capacity check, the missing dataset is what is refused.
    assert response.json()["code"] != "RESOURCE_UNAVAILABLE"
    assert response.json()["field"] in {"dataset", None}, response.text
    assert "/nonexistent/ds" in response.json()["message"]


# -- keys ------------------------------------------------------------------------------------------


def test_last_admin_key_cannot_be_revoked(offline_api: ApiHarness) -> None:
    api = offline_api
    headers = api.headers()
    keys = api.client.get("/api/v1/keys", headers=headers).json()["items"]
    [admin] = [k for k in keys if k["role"] == "admin" and k["revoked_at"] is None]
    body = _error(
        api.client.delete(f"/api/v1/keys/{admin['id']}", headers=headers), 409, "CONFLICT"
    )
    assert "last active admin key" in body["message"]
    # With a second admin, the first can go; then the second is the last.
    second = api.client.post(
        "/api/v1/keys", json={"name": "admin-2", "role": "admin"}, headers=headers
    ).json()
    assert api.client.delete(f"/api/v1/keys/{admin['id']}", headers=headers).status_code == (200)
    headers2 = {"Authorization": f"Bearer {second['key']}"}
    response = api.client.delete(f"/api/v1/keys/{second['id']}", headers=headers2)
    _error(response, 409, "CONFLICT")
    # Revoking other roles is unaffected.
    keys = api.client.get("/api/v1/keys", headers=headers2).json()["items"]
    viewer = next(k for k in keys if k["role"] == Role.viewer.value)
    assert api.client.delete(f"/api/v1/keys/{viewer['id']}", headers=headers2).status_code == (200)


# -- docs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_without_internet(api: ApiHarness, page: str) -> None:
    response = api.client.get(page)
    assert response.status_code == 200
    html = response.text
    assert not re.search(r"https?://", html), re.findall(r"https?://[^\s\"'<>]+", html)
    assets = re.findall(r"(?:src|href)=\"([^\"]+)\"", html) + re.findall(
        r"url: '([^']+\.(?:js|css))'", html
    )
    scripts = [a for a in assets if a.endswith((".js", ".css", ".png"))]
    assert scripts, html
    for asset in scripts:
        loaded = api.client.get(asset)
        assert loaded.status_code == 200, asset
        assert len(loaded.content) > 1000, asset
