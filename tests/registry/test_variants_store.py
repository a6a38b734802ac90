"""Built inference variants of a version: the store on SQLite and PostgreSQL, the artifact upload
through the artifact store on file:// and s3:// roots, and the REST route that lists them.

The artifact is a real variant: ``onnx-fp32`` built from the session's ONNX export of the
untrained Nano (a copy of the export, so no second export is paid here)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from detrforge.control.variants import VariantService
from detrforge.detector.variants import BuiltVariant, artifact_sha256, build_variants
from detrforge.platform.blobs import sha256_file
from detrforge.platform.errors import IntegrityError, InvalidSpecError, NotFoundError
from detrforge.platform.storage import open_store
from detrforge.registry.entities import Role, SystemPrincipal
from detrforge.registry.variants import VariantStore
from fixtures_cluster import ApiHarness, wait_until
from fixtures_db import RegistryStores

pytestmark = pytest.mark.xdist_group("variants")

ACTOR = "key:test"
MODEL = "shelf"


@pytest.fixture(scope="module")
def onnx_fp32(
    nano_checkpoint: Path, nano_onnx: Any, tmp_path_factory: pytest.TempPathFactory
) -> BuiltVariant:
    (built,) = build_variants(
        nano_checkpoint,
        "nano",
        128,
        tmp_path_factory.mktemp("variant"),
        names=["onnx-fp32"],
        export=nano_onnx,
    )
    assert isinstance(built, BuiltVariant)
    return built


def _version(stores: RegistryStores) -> None:
    stores.models.create_model(MODEL, actor=ACTOR)
    stores.models.register_version(
        MODEL,
        checkpoint_uri="file:///ckpt/v1.pth",
        checkpoint_sha256="1" * 64,
        checkpoint_bytes=7,
        model_size="nano",
        resolution=128,
        actor=ACTOR,
    )


def test_store_records_once_per_sha_and_returns_frozen_entities(
    registry_stores: RegistryStores, session_factory: sessionmaker[Session]
) -> None:
    _version(registry_stores)
    store = VariantStore(session_factory)
    fields: dict[str, Any] = {
        "runtime": "onnxruntime",
        "precision": "int8",
        "artifact_uri": "file:///a/variants/" + "a" * 64,
        "model_file": "model.onnx",
        "size_bytes": 123,
        "build_seconds": 4.5,
        "recipe": {"quantization": {"format": "QDQ"}, "calibration": {"fingerprint": "f"}},
        "metrics": {"bbox/AP": 0.41},
        "actor": ACTOR,
    }
    first = store.add_variant(MODEL, 1, name="onnx-int8", sha256="a" * 64, **fields)
    again = store.add_variant(MODEL, 1, name="onnx-int8", sha256="a" * 64, **fields)
    assert again.id == first.id and again.created_at == first.created_at
    rebuilt = store.add_variant(MODEL, 1, name="onnx-int8", sha256="b" * 64, **fields)
    other = store.add_variant(MODEL, 1, name="onnx-opt", sha256="c" * 64, **fields)
    listed = store.list_variants(MODEL, 1)
    assert [(v.name, v.sha256) for v in listed] == [
        ("onnx-int8", "b" * 64),
        ("onnx-int8", "a" * 64),
        ("onnx-opt", "c" * 64),
    ]
    assert store.current_variant(MODEL, 1, "onnx-int8").id == rebuilt.id
    assert store.current_variant(MODEL, 1, "onnx-opt") == other
    assert first.recipe["quantization"] == {"format": "QDQ"}
    assert (first.metrics, first.size_bytes, first.build_seconds) == ({"bbox/AP": 0.41}, 123, 4.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.sha256 = "d" * 64  # type: ignore[misc]
    with pytest.raises(NotFoundError, match="no openvino-int8 variant") as info:
        store.current_variant(MODEL, 1, "openvino-int8")
    assert info.value.field == "variant"
    with pytest.raises(NotFoundError, match="has no version 2"):
        store.list_variants(MODEL, 2)
    with pytest.raises(InvalidSpecError, match="not a hex sha256") as bad:
        store.add_variant(MODEL, 1, name="onnx-int8", sha256="XYZ", **fields)
    assert bad.value.field == "sha256"


@pytest.mark.parametrize("root", ["file", "s3"])
def test_service_uploads_under_variants_sha(
    root: str,
    registry_stores: RegistryStores,
    session_factory: sessionmaker[Session],
    onnx_fp32: BuiltVariant,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    _version(registry_stores)
    artifact_root = (
        str(request.getfixturevalue("s3_bucket")) if root == "s3" else f"file://{tmp_path}"
    )
    service = VariantService(store=VariantStore(session_factory), artifact_root=artifact_root)
    recorded = service.store_built(MODEL, 1, onnx_fp32, principal=SystemPrincipal("optimize:t"))
    assert recorded.artifact_uri == f"{artifact_root}/variants/{onnx_fp32.sha256}"
    assert recorded.sha256 == onnx_fp32.sha256 == sha256_file(onnx_fp32.model_path)
    assert recorded.recipe["opset"] == 17 and recorded.created_by == "optimize:t"
    store = open_store(artifact_root)
    stored = f"{recorded.artifact_uri}/{recorded.model_file}"
    assert store.sha256(stored) == onnx_fp32.sha256
    assert store.size(stored) == onnx_fp32.size_bytes
    # Same bytes again: one record.
    assert service.store_built(MODEL, 1, onnx_fp32, principal=SystemPrincipal("x")) == recorded
    with pytest.raises(NotFoundError, match="has no version 9"):
        service.store_built(MODEL, 9, onnx_fp32, principal=SystemPrincipal("x"))


def test_service_refuses_a_changed_artifact(
    registry_stores: RegistryStores, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    _version(registry_stores)
    folder = tmp_path / "onnx-fp32"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not what was built")
    built = BuiltVariant(
        name="onnx-fp32",
        runtime="onnxruntime",
        precision="fp32",
        folder=folder,
        model_file="model.onnx",
        sha256=hashlib.sha256(b"what was built").hexdigest(),
        size_bytes=14,
        build_seconds=1.0,
        recipe={},
    )
    service = VariantService(
        store=VariantStore(session_factory), artifact_root=f"file://{tmp_path}/root"
    )
    with pytest.raises(IntegrityError, match="changed after it was built"):
        service.store_built(MODEL, 1, built, principal=SystemPrincipal("x"))
    assert not (tmp_path / "root").exists()


def test_route_lists_a_versions_variants(
    offline_api: ApiHarness, nano_checkpoint: Path, onnx_fp32: BuiltVariant
) -> None:
    api = offline_api
    headers = api.headers(Role.operator)
    response = api.client.post("/api/v1/models", json={"name": MODEL}, headers=headers)
    assert response.status_code == 201, response.text
    body = {"checkpoint": str(nano_checkpoint), "model_size": "nano", "resolution": 128}
    response = api.client.post(f"/api/v1/models/{MODEL}/versions", json=body, headers=headers)
    assert response.status_code == 201, response.text
    url = f"/api/v1/models/{MODEL}/versions/1/variants"
    viewer = api.headers(Role.viewer)
    assert api.client.get(url, headers=viewer).json() == {"items": []}
    services = api.client.app.state.services  # type: ignore[attr-defined]
    services.variants.store_built(MODEL, 1, onnx_fp32, principal=SystemPrincipal("optimize:t"))
    items = api.client.get(url, headers=viewer).json()["items"]
    assert len(items) == 1
    item = items[0]
    assert (item["name"], item["runtime"], item["precision"]) == (
        "onnx-fp32",
        "onnxruntime",
        "fp32",
    )
    assert item["sha256"] == onnx_fp32.sha256 and item["model_file"] == "model.onnx"
    assert item["artifact_uri"].endswith(f"/variants/{onnx_fp32.sha256}")
    assert item["recipe"]["checkpoint_sha256"] == sha256_file(nano_checkpoint)
    missing = api.client.get(f"/api/v1/models/{MODEL}/versions/7/variants", headers=viewer)
    assert missing.status_code == 404 and "has no version 7" in missing.json()["message"]
    bad = api.client.get(f"/api/v1/models/{MODEL}/versions/zero/variants", headers=viewer)
    assert bad.status_code == 422
    assert api.client.get(url).status_code == 401


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def test_the_production_alias_answers_with_what_ships_on_a_target(
    offline_api: ApiHarness, nano_checkpoint: Path, onnx_fp32: BuiltVariant
) -> None:
    """A policy names the variant that ships on a target; the alias with ``?target=`` answers
    with that artifact's URI and sha256 (what a serving fleet downloads), the plain alias with
    the checkpoint. A variant not in the catalog, or one for a GPU on a CPU target, is a 422."""
    api = offline_api
    operator, approver, viewer = (
        api.headers(r) for r in (Role.operator, Role.approver, Role.viewer)
    )
    _ok(api.client.post("/api/v1/models", json={"name": MODEL}, headers=operator), 201)
    body = {"checkpoint": str(nano_checkpoint), "model_size": "nano", "resolution": 128}
    version = _ok(
        api.client.post(f"/api/v1/models/{MODEL}/versions", json=body, headers=operator), 201
    )
    target = {"name": "cpu-1t", "resources": {"CPU": 1}, "backend": "torch", "num_threads": 1}
    _ok(api.client.post("/api/v1/hardware-targets", json=target, headers=approver), 201)
    # No policy yet: the promotion needs no evidence (the API here has no cluster).
    promotion = _ok(
        api.client.post(
            f"/api/v1/models/{MODEL}/versions/1/promotions",
            json={"to": "production"},
            headers=approver,
        ),
        202,
    )
    wait_until(
        lambda: api.client.get(f"/api/v1/promotions/{promotion['id']}", headers=viewer).json(),
        until=lambda p: p["state"] == "applied",
        what="the ungated promotion",
        timeout_s=30,
        every_s=0.2,
    )

    def policy(variant: str | None) -> Any:
        gate = {"target": "cpu-1t", "p95_sla_ms": 1000.0, "variant": variant}
        return api.client.put(
            f"/api/v1/models/{MODEL}/policy", json={"targets": [gate]}, headers=approver
        )

    unknown = policy("onnx-int9")
    assert unknown.status_code == 422 and unknown.json()["field"] == "targets.0.variant"
    assert "onnx-int8" in unknown.json()["message"]  # the choices are listed
    gpu_only = policy("onnx-cuda")
    assert gpu_only.status_code == 422 and gpu_only.json()["field"] == "targets.0.variant"
    assert "NVIDIA GPU" in gpu_only.json()["message"]
    _ok(policy("onnx-fp32"))

    alias = f"/api/v1/models/{MODEL}/aliases/production"
    plain = _ok(api.client.get(alias, headers=viewer))
    assert (plain["variant"], plain["model_file"], plain["target"]) == (None, None, None)
    assert plain["artifact_sha256"] == version["checkpoint_sha256"]
    assert plain["artifact_uri"] == version["checkpoint_uri"]
    other = api.client.get(alias, params={"target": "cpu-2t"}, headers=viewer)
    assert other.status_code == 422 and other.json()["field"] == "target"
    assert "cpu-1t" in other.json()["message"]
    unbuilt = api.client.get(alias, params={"target": "cpu-1t"}, headers=viewer)
    assert unbuilt.status_code == 404 and unbuilt.json()["field"] == "variant"
    assert f"detrforge optimize {MODEL} 1" in unbuilt.json()["message"]

    services = api.client.app.state.services  # type: ignore[attr-defined]
    services.variants.store_built(MODEL, 1, onnx_fp32, principal=SystemPrincipal("optimize:t"))
    shipped = _ok(api.client.get(alias, params={"target": "cpu-1t"}, headers=viewer))
    assert (shipped["version"], shipped["target"], shipped["variant"]) == (1, "cpu-1t", "onnx-fp32")
    assert shipped["artifact_sha256"] == onnx_fp32.sha256 and shipped["model_file"] == "model.onnx"
    stored = open_store(shipped["artifact_uri"].rsplit("/variants/", 1)[0])
    local = stored.get_dir(shipped["artifact_uri"], Path(str(onnx_fp32.folder) + "-fetched"))
    assert artifact_sha256(local) == shipped["artifact_sha256"]  # the bytes behind the answer

    _ok(policy(None))  # the target ships the checkpoint again
    eager = _ok(api.client.get(alias, params={"target": "cpu-1t"}, headers=viewer))
    assert (eager["variant"], eager["artifact_sha256"]) == (None, version["checkpoint_sha256"])


def test_optimize_requests_are_checked_before_the_cluster_is_asked(
    offline_api: ApiHarness, nano_checkpoint: Path, shapes_dataset: Path
) -> None:
    api = offline_api
    operator, approver = api.headers(Role.operator), api.headers(Role.approver)
    _ok(api.client.post("/api/v1/models", json={"name": MODEL}, headers=operator), 201)
    body = {"checkpoint": str(nano_checkpoint), "model_size": "nano", "resolution": 128}
    _ok(api.client.post(f"/api/v1/models/{MODEL}/versions", json=body, headers=operator), 201)
    target = {"name": "cpu-1t", "resources": {"CPU": 1}, "backend": "torch", "num_threads": 1}
    _ok(api.client.post("/api/v1/hardware-targets", json=target, headers=approver), 201)

    def optimize(request: Any, version: int = 1) -> Any:
        url = f"/api/v1/models/{MODEL}/versions/{version}/optimize"
        return api.client.post(url, json=request, headers=operator)

    cases = [
        ({"target": "cpu-1t", "variants": ["onnx-int9"]}, 422, "variants.0"),
        ({"target": "cpu-1t", "variants": ["onnx-fp32", "onnx-cuda"]}, 422, "variants.1"),
        ({"target": "cpu-1t", "variants": ["onnx-opt", "onnx-opt"]}, 422, "variants"),
        ({"target": "cpu-1t", "variants": []}, 422, "variants"),
        ({"target": "cpu-1t", "runs": 0}, 422, "runs"),
        ({"target": "cpu-1t", "ap_tolerance": -0.1}, 422, "ap_tolerance"),
        ({"target": "cpu-1t", "colour": "red"}, 422, "colour"),
        ({"target": "cpu-1t"}, 422, "dataset"),  # no dataset and no pinned eval set
        ({"target": "cpu-1t", "dataset": "/nowhere/at/all"}, 422, "dataset"),
        ({"target": "gpu-a10g", "dataset": str(shapes_dataset)}, 404, None),
    ]
    for request, status, field in cases:
        response = optimize(request)
        assert response.status_code == status, (request, response.text)
        if field is not None:
            assert response.json()["field"] == field, (request, response.json())
    missing = optimize({"target": "cpu-1t", "dataset": str(shapes_dataset)}, version=9)
    assert missing.status_code == 404 and "has no version 9" in missing.json()["message"]
    viewer = api.client.post(
        f"/api/v1/models/{MODEL}/versions/1/optimize",
        json={"target": "cpu-1t"},
        headers=api.headers(Role.viewer),
    )
    assert viewer.status_code == 403
    # A valid request reaches the cluster: here none listens, so it is a 503, not a job.
    unreachable = optimize({"target": "cpu-1t", "dataset": str(shapes_dataset)})
    assert unreachable.status_code == 503, unreachable.text
