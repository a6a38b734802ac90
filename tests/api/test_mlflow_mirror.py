"""The MLflow mirror on an embedded store and on an MLflow server (PostgreSQL backend store, S3
artifacts): after every registration, promotion and rollback, MLflow's own client sees the
registry's versions and stages as aliases, and ``models:/NAME@production`` downloads the bytes
whose sha256 the registry holds. A retried, interrupted or duplicated mirror converges; a
failed one is logged, shown on ``/ready`` and retried, and never touches the registry.

The same flows on a real fine-tune job's run are in tests/jobs/test_finetune_integration.py
(embedded store and server), a sweep trial's nested run in tests/jobs/test_sweep_integration.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from mlflow import MlflowClient
from sqlalchemy import update

from detrforge.control.mirror import MlflowMirror
from detrforge.platform.db import make_engine
from detrforge.platform.tags import Tag
from detrforge.platform.tracking import Tracker
from detrforge.registry.dbmodels import SqlModelVersion
from fixtures_cluster import ApiHarness, free_port, harness, make_settings, wait_until
from fixtures_db import POSTGRES_URL_VARIABLE, _fresh_postgres_database
from fixtures_mlflow import alias_checkpoint_sha256

MODEL = "mirrored"


@pytest.fixture(scope="module")
def second_checkpoint(nano_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``nano_checkpoint``'s model with one more note in its ``args``: other bytes, same model."""
    import torch

    data = torch.load(nano_checkpoint, map_location="cpu", weights_only=False)
    data["args"]["note"] = "the second version"
    out = tmp_path_factory.mktemp("mirror") / "nano-second.pth"
    torch.save(data, out)
    return out


def _embedded(tmp_path: Path) -> Iterator[ApiHarness]:
    settings = make_settings(
        tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'registry.db'}",
        ray_address=f"http://127.0.0.1:{free_port()}",
        artifact_root=None,
    )
    yield from harness(settings)


@dataclass(frozen=True)
class MirrorCase:
    """An API to mirror from and the two checkpoints registered as v1 and v2."""

    api: ApiHarness
    first: Path
    second: Path


@pytest.fixture(params=["embedded", "server"])
def mirror_case(
    request: pytest.FixtureRequest, tmp_path: Path, nano_checkpoint: Path
) -> Iterator[MirrorCase]:
    """The API (no cluster) on the embedded default (SQLite registry, SQLite MLflow store,
    file:// artifacts) or on the MLflow server (PostgreSQL + S3) with a PostgreSQL registry.

    Every 100 MB checkpoint goes through moto twice on the server (up once, down at each
    production change), so there v2 has v1's bytes: the one logged model they share shows the
    mirror's content addressing; which bytes an alias gets is proven on the embedded store,
    where v2 differs. The registry's artifact root stays file://: the mirror reading an s3://
    blob is covered with a real job in test_finetune_with_s3_artifacts.
    """
    if request.param == "embedded":
        second = request.getfixturevalue("second_checkpoint")
        for api in _embedded(tmp_path):
            yield MirrorCase(api, nano_checkpoint, second)
        return
    server = request.getfixturevalue("mlflow_server")  # skips without PostgreSQL
    databases = _fresh_postgres_database(os.environ[POSTGRES_URL_VARIABLE])
    settings = make_settings(
        tmp_path / "home",
        database_url=next(databases),
        ray_address=f"http://127.0.0.1:{free_port()}",
        artifact_root=None,
    ).model_copy(update={"mlflow_tracking_uri": server.uri})
    for api in harness(settings):
        yield MirrorCase(api, nano_checkpoint, nano_checkpoint)
    next(databases, None)


@pytest.fixture
def embedded_api(tmp_path: Path) -> Iterator[ApiHarness]:
    yield from _embedded(tmp_path)


def _register(api: ApiHarness, checkpoint: Path) -> dict[str, Any]:
    body = {"checkpoint": str(checkpoint), "model_size": "nano", "resolution": 128}
    return dict(api.call("POST", f"/models/{MODEL}/versions", body))


def _promote(api: ApiHarness, version: int, to: str) -> None:
    promotion = api.call("POST", f"/models/{MODEL}/versions/{version}/promotions", {"to": to})
    done = wait_until(
        lambda: api.call("GET", f"/promotions/{promotion['id']}"),
        until=lambda p: p["state"] in ("applied", "failed"),
        what=f"the promotion of v{version} to {to} to end",
        timeout_s=60,
        every_s=0.2,
    )
    assert done["state"] == "applied", done["message"]


def _client(api: ApiHarness) -> MlflowClient:
    return MlflowClient(tracking_uri=api.settings.resolved_tracking_uri())


def _aliases(client: MlflowClient) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()}


def _versions(api: ApiHarness) -> dict[int, dict[str, Any]]:
    return {v["version"]: v for v in api.call("GET", f"/models/{MODEL}/versions")["items"]}


def _assert_in_step(api: ApiHarness, dest: Path | None = None) -> dict[str, str]:
    """MLflow's aliases equal the registry's stages; with ``dest``, production downloads (to
    there) the bytes registered for it.

    The mirror runs right after a promotion commits, so the aliases are awaited briefly.
    """
    versions = _versions(api)
    want = {
        v["stage"]: v["mlflow_version"]
        for v in versions.values()
        if v["stage"] in ("staging", "production")
    }
    client = _client(api)
    wait_until(
        lambda: _aliases(client),
        until=lambda have: have == want,
        what=f"MLflow's aliases to equal the registry's stages {want}",
        timeout_s=30,
        every_s=0.2,
    )
    if dest is not None:
        [production] = [v for v in versions.values() if v["stage"] == "production"]
        sha256 = alias_checkpoint_sha256(client.tracking_uri, MODEL, "production", dest)
        assert sha256 == production["checkpoint_sha256"]
    return want


def _logged_model_id(source: str) -> str:
    """The logged model a version's ``source`` (``.../models/m-<id>/artifacts``) names; the
    server's model versions do not carry ``model_id`` themselves."""
    found = re.search(r"/models/(m-[0-9a-f]+)/", source)
    assert found is not None, source
    return found.group(1)


def test_versions_and_aliases_follow_the_registry(mirror_case: MirrorCase, tmp_path: Path) -> None:
    api = mirror_case.api
    client = _client(api)
    api.call("POST", "/models", {"name": MODEL, "description": "mirrored to MLflow"})
    first, second = _register(api, mirror_case.first), _register(api, mirror_case.second)
    assert (first["mlflow_version"], second["mlflow_version"]) == ("1", "2")
    distinct = {first["checkpoint_sha256"], second["checkpoint_sha256"]}
    assert len(distinct) == (1 if mirror_case.first == mirror_case.second else 2)
    for registered in (first, second):
        mv = client.get_model_version(MODEL, registered["mlflow_version"])
        assert mv.tags[Tag.VERSION] == str(registered["version"])
        assert mv.tags[Tag.CHECKPOINT_SHA256] == registered["checkpoint_sha256"]
        assert mv.tags[Tag.REGISTERED_MODEL] == MODEL
        assert (mv.tags[Tag.MODEL_SIZE], mv.tags[Tag.RESOLUTION]) == ("nano", "128")
        # No source run: the mirror made a registration run to hold the version.
        run = client.get_run(mv.run_id)
        assert run.data.tags[Tag.KIND] == "registration"
        assert run.data.tags[Tag.VERSION] == str(registered["version"])
        # Its source is a logged model in MLflow's artifact store, never the local blob.
        assert "/models/m-" in mv.source and not mv.source.startswith(registered["checkpoint_uri"])
    assert _assert_in_step(api) == {}

    # Each time production changes, models:/NAME@production downloads its registered bytes.
    _promote(api, 1, "staging")
    assert _assert_in_step(api) == {"staging": "1"}
    _promote(api, 1, "production")
    assert _assert_in_step(api, tmp_path / "2") == {"production": "1"}
    _promote(api, 2, "staging")
    assert _assert_in_step(api) == {"staging": "2", "production": "1"}
    _promote(api, 2, "production")
    assert _assert_in_step(api, tmp_path / "4") == {"production": "2"}
    assert _versions(api)[1]["stage"] == "archived"
    api.call("POST", f"/models/{MODEL}/rollback", {"reason": "back to v1"})
    assert _assert_in_step(api, tmp_path / "5") == {"production": "1"}

    # A mirror interrupted after MLflow made the versions but before the registry recorded
    # them is retried: it finds them by their tags and makes nothing twice.
    mirror: MlflowMirror = api.client.app.state.services.mirror  # type: ignore[attr-defined]
    engine = make_engine(api.settings.resolved_database_url())
    with engine.begin() as connection:
        connection.execute(update(SqlModelVersion).values(mlflow_version=None))
    engine.dispose()
    assert mirror.sync(MODEL) is True
    assert {v: row["mlflow_version"] for v, row in _versions(api).items()} == {1: "1", 2: "2"}
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 2
    # One logged model per checkpoint content, shared by the versions of that content. The
    # session's server also holds other tests' models, so count only those of these bytes.
    experiment = Tracker(client.tracking_uri).experiment_id()
    for sha256 in distinct:
        logged = client.search_logged_models(
            [experiment], filter_string=f"tags.`{Tag.CHECKPOINT_SHA256}` = '{sha256}'"
        )
        using = {
            _logged_model_id(client.get_model_version(MODEL, v["mlflow_version"]).source)
            for v in (first, second)
            if v["checkpoint_sha256"] == sha256
        }
        assert [m.model_id for m in logged] == sorted(using), (sha256, logged)

    # Drift (aliases moved by hand) and a duplicate (two replicas mirroring at once) are repaired.
    client.set_registered_model_alias(MODEL, "staging", "2")
    client.delete_registered_model_alias(MODEL, "production")
    duplicate = client.get_model_version(MODEL, "2")
    extra = client.create_model_version(
        MODEL,
        source=duplicate.source,
        run_id=duplicate.run_id,
        model_id=_logged_model_id(duplicate.source),
        tags=duplicate.tags,
    )
    assert mirror.sync(MODEL) is True
    assert _assert_in_step(api) == {"production": "1"}
    assert sorted(mv.version for mv in client.search_model_versions(f"name = '{MODEL}'")) == [
        mv.version for mv in (client.get_model_version(MODEL, "1"), duplicate)
    ]
    assert str(extra.version) == "3"
    assert mirror.lagging() == []


def _local(uri: str) -> Path:
    return Path(unquote(urlsplit(uri).path))


def _flip_byte(path: Path, offset: int = 1000) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_a_failed_mirror_is_logged_shown_and_retried(
    embedded_api: ApiHarness,
    nano_checkpoint: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The tracking store is switched to a fresh one (as when a deployment moves to an MLflow
    server) while the registered blob is corrupt: the mirror refuses to publish it, says so in
    the log and on /ready, leaves the registry alone, and catches up once the blob is whole."""
    api = embedded_api
    api.call("POST", "/models", {"name": MODEL})
    registered = _register(api, nano_checkpoint)
    _promote(api, 1, "production")
    services = api.client.app.state.services  # type: ignore[attr-defined]
    fresh = Tracker(
        f"sqlite:///{tmp_path / 'fresh-mlflow.db'}",
        artifact_root=(tmp_path / "fresh-artifacts").as_uri(),
    )
    mirror = MlflowMirror(
        store=services.mirror.store,
        tracker=fresh,
        artifact_root=api.settings.resolved_artifact_root(),
        scratch_dir=tmp_path / "scratch",
        retry_min_s=60.0,
    )
    blob = _local(registered["checkpoint_uri"])
    pristine = tmp_path / "pristine.pth"
    shutil.copyfile(blob, pristine)
    _flip_byte(blob)

    with caplog.at_level(logging.ERROR, logger="detrforge.control.mirror"):
        assert mirror.sync(MODEL) is False
    [lag] = mirror.lagging()
    assert (lag.model, lag.attempts) == (MODEL, 1)
    assert lag.error.startswith("IntegrityError: checkpoint changed or corrupt")
    assert lag.retry_at > time.monotonic() + 50  # backoff: not before retry_min_s
    assert f"mirroring model {MODEL} to MLflow failed (attempt 1, retried in 60 s)" in caplog.text
    assert fresh.client.search_model_versions(f"name = '{MODEL}'") == []
    assert _versions(api)[1]["stage"] == "production"  # the registry is untouched
    readiness = dataclasses.replace(services.readiness, mirror=mirror)
    [status] = [s for s in readiness.check() if s.name == "mlflow"]
    assert status.ok and "the model registry mirror is behind for 1 model(s)" in status.message
    assert f"first: {MODEL}, 1 failed attempt(s): IntegrityError" in status.message

    mirror.retry_due()  # not due yet: nothing happens
    assert mirror.lagging() == [lag]
    shutil.copyfile(pristine, blob)
    mirror.retry_due(now=lag.retry_at)
    assert mirror.lagging() == []
    assert {k: str(v) for k, v in fresh.client.get_registered_model(MODEL).aliases.items()} == {
        "production": "1"
    }
    sha256 = alias_checkpoint_sha256(fresh.tracking_uri, MODEL, "production", tmp_path / "dl")
    assert sha256 == registered["checkpoint_sha256"]
