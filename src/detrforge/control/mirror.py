"""The MLflow mirror: each registered model, its versions and the ``staging``/``production``
aliases, copied to MLflow's model registry, so ``models:/NAME@production`` resolves with
MLflow's own client to the registered bytes, on an embedded store and on an MLflow server alike.

A version is mirrored the same way on every tracking store:

1. its MLflow run: the version's own source run (a fine-tune job's, a sweep trial's) when this
   tracking store has it, else a *registration run* made for it (tagged ``kind=registration``);
2. a logged model whose one file, ``checkpoint.pth``, is the registered checkpoint, read from
   the artifact store and re-hashed first (MLflow stores it wherever it keeps artifacts: an
   MLflow server accepts no model version whose source is a local path). Like the blob store it
   is content-addressed: one logged model per sha256 (tagged with it), made from the first
   version's run and shared by every later version with the same bytes;
3. a model version with that logged model as its source and the version's run as its run,
   tagged with our model name, version number and the checkpoint's sha256.

Every step first looks for what an earlier, interrupted attempt made (by those tags), so a
retried mirror never makes a second copy or version; a duplicate two replicas made at once is
deleted by the next sync, which keeps the lowest MLflow version. Aliases are set, then read
back against the registry's stages, until both agree.

The registry database is the source of truth and the mirror runs after its commits: ``sync``
never raises to its caller. A model whose mirror failed is logged and retried with backoff by
``run_forever`` (the API's mirror thread), which also syncs every model when it starts and every
``full_sync_interval_s``, repairing what a restart, another replica or a hand edit left behind.
``lagging()`` says which models are behind and why (``/ready`` shows it).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detrforge.platform.blobs import sha256_file
from detrforge.platform.errors import ConflictError, IntegrityError
from detrforge.platform.storage import open_store
from detrforge.platform.tags import Tag
from detrforge.platform.tracking import LoggedModelRef, Tracker
from detrforge.registry.entities import ModelVersion, Stage
from detrforge.registry.models import ModelStore

__all__ = ["ALIASED_STAGES", "MODEL_CHECKPOINT_FILE", "MirrorLag", "MlflowMirror"]

log = logging.getLogger(__name__)

# The one file of every model the mirror logs: ``download_artifacts("models:/NAME@production")``
# gives a folder holding it.
MODEL_CHECKPOINT_FILE = "checkpoint.pth"
# The stages MLflow sees as aliases of the same name.
ALIASED_STAGES = (Stage.staging, Stage.production)
# The ``detrforge.kind`` of a run made to hold a version that has no run of its own.
REGISTRATION_KIND = "registration"
# Set aliases, read them back: a promotion committed meanwhile needs another pass.
_ALIAS_PASSES = 4
_PAGE = 1000


@dataclass(frozen=True, slots=True)
class MirrorLag:
    """A model whose MLflow mirror is behind: how often it failed, why, when it is retried."""

    model: str
    attempts: int
    error: str
    retry_at: float  # time.monotonic()


@dataclass
class MlflowMirror:
    """Mirrors ``store``'s models into the MLflow registry behind ``tracker``; versions' bytes
    are read from the artifact store at ``artifact_root``, staged under ``scratch_dir``."""

    store: ModelStore
    tracker: Tracker
    artifact_root: str
    scratch_dir: Path
    retry_min_s: float = 5.0
    retry_max_s: float = 300.0
    full_sync_interval_s: float = 300.0
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _model_locks: dict[str, threading.Lock] = field(default_factory=dict)
    _lagging: dict[str, MirrorLag] = field(default_factory=dict)

    # -- what callers use ---------------------------------------------------------------------
    def sync(self, name: str) -> bool:
        """Bring model ``name``'s MLflow mirror in step with the registry; True when it is.

        Never raises: a failure is logged and the model is retried later (``run_forever``).
        """
        with self._lock_for(name):
            try:
                self._sync(name)
            except Exception as exc:  # noqa: BLE001 - runs after the registry committed
                self._failed(name, exc)
                return False
        self._recovered(name)
        return True

    def sync_all(self) -> int:
        """Sync every registered model; returns how many are still behind."""
        offset = 0
        while True:
            models, total = self.store.list_models(limit=_PAGE, offset=offset)
            for model in models:
                self.sync(model.name)
            offset += len(models)
            if not models or offset >= total:
                break
        return len(self._lagging)

    def retry_due(self, now: float | None = None) -> None:
        """Sync again every lagging model whose backoff has passed."""
        now = time.monotonic() if now is None else now
        with self._guard:
            due = [lag.model for lag in self._lagging.values() if lag.retry_at <= now]
        for name in due:
            self.sync(name)

    def lagging(self) -> list[MirrorLag]:
        """The models whose last sync failed, by name."""
        with self._guard:
            return sorted(self._lagging.values(), key=lambda lag: lag.model)

    def run_forever(self, stop: threading.Event, *, interval_s: float) -> None:
        """Sync every model now and every ``full_sync_interval_s``; retry failures meanwhile."""
        next_full = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_full:
                    self.sync_all()
                    next_full = time.monotonic() + self.full_sync_interval_s
                else:
                    self.retry_due()
            except Exception:  # noqa: BLE001 - the loop must outlive a flaky registry database
                log.exception("MLflow mirror pass failed; the next pass retries")
            stop.wait(interval_s)

    # -- one model ----------------------------------------------------------------------------
    def _sync(self, name: str) -> None:
        model = self.store.get_model(name)
        self._ensure_registered_model(name, model.description)
        mirrored = self._mirror_versions(name)
        for _ in range(_ALIAS_PASSES):
            holders = {stage: self.store.version_in_stage(name, stage) for stage in ALIASED_STAGES}
            if any(h is not None and h.version not in mirrored for h in holders.values()):
                mirrored = self._mirror_versions(name)  # registered since the last look
                continue
            want = {
                stage.value: mirrored[holder.version]
                for stage, holder in holders.items()
                if holder is not None
            }
            have = self._aliases(name)
            if have == want:
                return
            self._apply_aliases(name, want, have)
        raise ConflictError(
            f"the stages of model {name!r} kept changing while its MLflow aliases were set"
        )

    def _ensure_registered_model(self, name: str, description: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.tracker.client.create_registered_model(name, description=description or None)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def _aliases(self, name: str) -> dict[str, str]:
        aliases: dict[str, Any] = dict(self.tracker.client.get_registered_model(name).aliases)
        return {
            stage.value: str(aliases[stage.value])
            for stage in ALIASED_STAGES
            if stage.value in aliases
        }

    def _apply_aliases(self, name: str, want: dict[str, str], have: dict[str, str]) -> None:
        from mlflow.exceptions import MlflowException

        client = self.tracker.client
        for alias in (stage.value for stage in ALIASED_STAGES):
            if alias in want and have.get(alias) != want[alias]:
                client.set_registered_model_alias(name, alias, want[alias])
            elif alias not in want and alias in have:
                try:
                    client.delete_registered_model_alias(name, alias)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                        raise  # else: removed meanwhile, as wanted

    # -- versions -----------------------------------------------------------------------------
    def _mirror_versions(self, name: str) -> dict[int, str]:
        """Every registry version of ``name`` -> its MLflow version, creating missing ones."""
        existing = self._mlflow_versions(name)
        mirrored: dict[int, str] = {}
        for version in reversed(self.store.list_versions(name)):  # oldest first
            key = (version.version, version.checkpoint_sha256)
            found = existing.get(key)
            if found is None:
                chosen = self._create_version(version)
            else:
                chosen = self._drop_duplicates(name, found)
            if version.mlflow_version != chosen:
                self.store.set_mlflow_version(name, version.version, chosen)
            mirrored[version.version] = chosen
        return mirrored

    def _mlflow_versions(self, name: str) -> dict[tuple[int, str], list[str]]:
        """MLflow versions of ``name`` the mirror made, by (our version, sha256), lowest first.

        Versions without our three identity tags (made by hand, or by an older mirror that
        registered a file path) are not ours to reuse.
        """
        found: dict[tuple[int, str], list[str]] = {}
        token: str | None = None
        while True:
            page = self.tracker.client.search_model_versions(
                f"name = '{name}'", max_results=_PAGE, page_token=token
            )
            for mv in page:
                tags = mv.tags or {}
                if (
                    tags.get(Tag.REGISTERED_MODEL) != name
                    or not str(tags.get(Tag.VERSION, "")).isdigit()
                ):
                    continue
                key = (int(tags[Tag.VERSION]), str(tags.get(Tag.CHECKPOINT_SHA256, "")))
                found.setdefault(key, []).append(str(mv.version))
            token = page.token
            if not token:
                break
        return {key: sorted(values, key=int) for key, values in found.items()}

    def _drop_duplicates(self, name: str, versions: list[str]) -> str:
        """The lowest of the MLflow versions made for one registry version; any other (two
        replicas mirrored it at once) is deleted, and every replica keeps the same one."""
        for extra in versions[1:]:
            log.warning("model %s: deleting duplicate MLflow version %s", name, extra)
            self.tracker.client.delete_model_version(name, extra)
        return versions[0]

    def _identity(self, version: ModelVersion) -> dict[str, str]:
        return {
            Tag.REGISTERED_MODEL: version.model_name,
            Tag.VERSION: str(version.version),
            Tag.CHECKPOINT_SHA256: version.checkpoint_sha256,
        }

    def _create_version(self, version: ModelVersion) -> str:
        identity = self._identity(version)
        run_id = self._run_for(version)
        content = {Tag.CHECKPOINT_SHA256: version.checkpoint_sha256}
        logged = self.tracker.find_logged_model(content) or self._log_checkpoint(
            version, run_id, content
        )
        created = self.tracker.client.create_model_version(
            version.model_name,
            source=logged.artifact_location,
            run_id=run_id,
            model_id=logged.model_id,
            tags={
                **identity,
                Tag.MODEL_SIZE: version.model_size,
                Tag.RESOLUTION: str(version.resolution),
            },
            description=version.description or None,
        )
        return str(created.version)

    def _run_for(self, version: ModelVersion) -> str:
        """The version's own run when this tracking store has it, else its registration run."""
        if version.mlflow_run_id and self.tracker.run_exists(version.mlflow_run_id):
            return version.mlflow_run_id
        identity = {Tag.KIND: REGISTRATION_KIND, **self._identity(version)}
        existing = self.tracker.find_run(identity)
        if existing is not None:
            return existing
        run = self.tracker.client.create_run(
            self.tracker.experiment_id(),
            run_name=f"register-{version.model_name}-v{version.version}",
            tags={
                **identity,
                Tag.CHECKPOINT_URI: version.checkpoint_uri,
                Tag.MODEL_SIZE: version.model_size,
                Tag.RESOLUTION: str(version.resolution),
            },
        )
        run_id = str(run.info.run_id)
        self.tracker.end_run(run_id, "FINISHED")
        return run_id

    def _log_checkpoint(
        self, version: ModelVersion, run_id: str, tags: dict[str, str]
    ) -> LoggedModelRef:
        """The registered bytes, re-hashed, logged as the run's model ``checkpoint.pth``."""
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="mlflow-mirror-", dir=self.scratch_dir) as tmp:
            folder = Path(tmp)
            local = open_store(self.artifact_root).get_file(
                version.checkpoint_uri, folder / MODEL_CHECKPOINT_FILE
            )
            if sha256_file(local) != version.checkpoint_sha256:
                raise IntegrityError(
                    f"checkpoint changed or corrupt: {version.checkpoint_uri} no longer hashes "
                    f"to the sha256 registered for {version.model_name} v{version.version}; "
                    "it is not mirrored to MLflow"
                )
            return self.tracker.log_model_folder(
                folder,
                name=f"checkpoint-{version.checkpoint_sha256[:12]}",
                source_run_id=run_id,
                tags=tags,
                params={
                    "model_size": version.model_size,
                    "resolution": str(version.resolution),
                    "checkpoint_uri": version.checkpoint_uri,
                },
            )

    # -- bookkeeping --------------------------------------------------------------------------
    def _lock_for(self, name: str) -> threading.Lock:
        with self._guard:
            return self._model_locks.setdefault(name, threading.Lock())

    def _failed(self, name: str, exc: Exception) -> None:
        with self._guard:
            attempts = self._lagging[name].attempts + 1 if name in self._lagging else 1
            delay = min(self.retry_max_s, self.retry_min_s * 2 ** (attempts - 1))
            error = f"{type(exc).__name__}: {exc}"[:2000]
            self._lagging[name] = MirrorLag(name, attempts, error, time.monotonic() + delay)
        # The traceback once; later attempts say only that it still fails, and why.
        log.error(
            "mirroring model %s to MLflow failed (attempt %d, retried in %.0f s): %s",
            name,
            attempts,
            delay,
            error,
            exc_info=attempts == 1,
        )

    def _recovered(self, name: str) -> None:
        with self._guard:
            lag = self._lagging.pop(name, None)
        if lag is not None:
            log.info(
                "model %s is mirrored to MLflow again, after %d failed attempt(s)",
                name,
                lag.attempts,
            )
