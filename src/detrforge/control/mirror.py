"""The MLflow mirror: each registered model, its versions and the ``staging``/``production``
aliases, copied to MLflow's model registry after every change. The registry database is the
source of truth; the mirror is best effort and repaired by the next sync."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from detrforge.platform.errors import DetrforgeError
from detrforge.platform.tags import Tag
from detrforge.platform.tracking import Tracker
from detrforge.registry.entities import Stage
from detrforge.registry.models import ModelStore

__all__ = ["MlflowMirror"]

log = logging.getLogger(__name__)


@dataclass
class MlflowMirror:
    """Mirrors ``store``'s models into the MLflow registry behind ``tracker``."""

    store: ModelStore
    tracker: Tracker
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sync(self, name: str) -> bool:
        """Mirror the model, its versions and the ``staging``/``production`` aliases to MLflow.

        Best effort: a failed mirror is logged and repaired by the next sync. Returns whether
        the mirror is now in step.
        """
        from mlflow.exceptions import MlflowException

        client = self.tracker.client
        with self._lock:
            try:
                model = self.store.get_model(name)
                try:
                    client.create_registered_model(name, description=model.description or None)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                for version in reversed(self.store.list_versions(name)):
                    if version.mlflow_version is None:
                        mirrored = client.create_model_version(
                            name,
                            source=version.checkpoint_uri,
                            run_id=version.mlflow_run_id,
                            tags={
                                Tag.VERSION: str(version.version),
                                Tag.CHECKPOINT_SHA256: version.checkpoint_sha256,
                            },
                            description=version.description or None,
                        )
                        self.store.set_mlflow_version(name, version.version, mirrored.version)
                for stage in (Stage.staging, Stage.production):
                    holder = self.store.version_in_stage(name, stage)
                    if holder is not None and holder.mlflow_version is not None:
                        client.set_registered_model_alias(name, stage.value, holder.mlflow_version)
                    elif holder is None:
                        try:
                            client.delete_registered_model_alias(name, stage.value)
                        except MlflowException:
                            pass  # no such alias: already in step
                return True
            except (MlflowException, DetrforgeError, OSError):
                log.exception("mirroring model %s to MLflow failed; the next sync retries", name)
                return False
