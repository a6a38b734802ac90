"""MLflow tracking: one run per job, tagged ``detrforge.job_id``; the API reads results back.

The tracking URI is an embedded store (``sqlite:///...``) or an MLflow server (``http(s)://``);
everything here goes through ``MlflowClient``, so both behave the same. Against a server, the
server decides where artifacts live (its ``--artifacts-destination`` or
``--default-artifact-root``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detrforge.platform.tags import Tag

__all__ = ["EXPERIMENT", "LoggedModelRef", "RunSummary", "Tracker", "flatten_params"]

EXPERIMENT = "detrforge"


def flatten_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested spec -> flat ``{"a.b": "value"}`` strings, as MLflow params want them."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


@dataclass(frozen=True)
class RunSummary:
    """The latest metrics and the tags of one MLflow run."""

    run_id: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoggedModelRef:
    """An MLflow logged model (``models:/<model_id>``) and where its files are stored."""

    model_id: str
    artifact_location: str


def _tag_filter(tags: Mapping[str, str]) -> str:
    """An MLflow search filter matching every one of ``tags`` exactly."""
    for value in tags.values():
        if "'" in value:
            raise ValueError(f"tag value {value!r} cannot be searched for (it has a quote)")
    return " AND ".join(f"tags.`{key}` = '{value}'" for key, value in sorted(tags.items()))


class Tracker:
    """A thin, explicit wrapper over ``MlflowClient`` bound to one tracking URI."""

    def __init__(self, tracking_uri: str, *, artifact_root: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        if tracking_uri.startswith("sqlite:"):
            # The embedded MLflow store holds params and tags of every run: owner-only, like
            # the registry database (MLflow would create it world-readable).
            from detrforge.platform.db import private_sqlite_file

            private_sqlite_file(tracking_uri)
        self.artifact_root = artifact_root
        # The model registry is the tracking store itself (MLflow's default), named explicitly
        # so no process-wide MLFLOW_REGISTRY_URI can split them.
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    @property
    def is_server(self) -> bool:
        """Whether the tracking URI names an MLflow server rather than a local store."""
        return self.tracking_uri.startswith(("http://", "https://"))

    def experiment_id(self, name: str = EXPERIMENT) -> str:
        """The id of experiment ``name``, created if missing: under our artifact root with an
        embedded store; where the server puts artifacts with an MLflow server (a path on this
        machine would mean nothing to the server or to the cluster's nodes)."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = (
            f"{self.artifact_root}/mlflow" if self.artifact_root and not self.is_server else None
        )
        try:
            return str(self.client.create_experiment(name, artifact_location=location))
        except Exception:
            # Another process created it between our look-up and create.
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def find_run(self, tags: Mapping[str, str]) -> str | None:
        """The id of a run of the experiment carrying every one of ``tags``, if one exists."""
        runs = self.client.search_runs(
            [self.experiment_id()], filter_string=_tag_filter(tags), max_results=1
        )
        return str(runs[0].info.run_id) if runs else None

    def run_exists(self, run_id: str) -> bool:
        """Whether this tracking store has run ``run_id`` (not deleted)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_run(run_id).info.lifecycle_stage) == "active"
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise

    def find_logged_model(self, tags: Mapping[str, str]) -> LoggedModelRef | None:
        """A READY logged model of the experiment carrying every one of ``tags``, if any."""
        from mlflow.entities import LoggedModelStatus

        models = self.client.search_logged_models(
            [self.experiment_id()], filter_string=_tag_filter(tags)
        )
        ready = [m for m in models if m.status == LoggedModelStatus.READY]
        if not ready:
            return None
        oldest = min(ready, key=lambda m: (m.creation_timestamp, m.model_id))
        return LoggedModelRef(str(oldest.model_id), str(oldest.artifact_location))

    def log_model_folder(
        self,
        folder: Path,
        *,
        name: str,
        source_run_id: str | None,
        tags: Mapping[str, str],
        params: Mapping[str, str],
    ) -> LoggedModelRef:
        """Log the files in ``folder`` as a new MLflow logged model, READY once all are stored.

        An upload that fails marks the model FAILED (so ``find_logged_model`` never returns a
        partial one) and raises.
        """
        from mlflow.entities import LoggedModelStatus

        model = self.client.create_logged_model(
            self.experiment_id(),
            name=name,
            source_run_id=source_run_id,
            tags=dict(tags),
            params=dict(params),
        )
        try:
            self.client.log_model_artifacts(model.model_id, str(folder))
        except BaseException:
            try:
                self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            except Exception:  # noqa: BLE001 - the upload's own error is the one to raise
                pass
            raise
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return LoggedModelRef(str(model.model_id), str(model.artifact_location))

    def find_job_run(self, job_id: str) -> str | None:
        """The run id tagged with ``job_id``, if one exists."""
        runs = self.client.search_runs(
            [self.experiment_id()], filter_string=f"tags.`{Tag.JOB_ID}` = '{job_id}'", max_results=1
        )
        return runs[0].info.run_id if runs else None

    def start_job_run(
        self, job_id: str, *, run_name: str, params: dict[str, Any], tags: dict[str, str]
    ) -> str:
        """Create (or find, when a driver is retried) the run of ``job_id``."""
        existing = self.find_job_run(job_id)
        if existing is not None:
            return existing
        run = self.client.create_run(
            self.experiment_id(), run_name=run_name, tags={Tag.JOB_ID: job_id, **tags}
        )
        run_id = str(run.info.run_id)
        self.log_params(run_id, params)
        return run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten_params(params)
        items = [Param(k, v) for k, v in sorted(flat.items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], *, step: int) -> None:
        """Log finite metrics at ``step`` in one batch."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def end_run(self, run_id: str, status: str) -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)

    def summary(self, run_id: str) -> RunSummary:
        run = self.client.get_run(run_id)
        return RunSummary(
            run_id=run_id,
            status=str(run.info.status),
            metrics=dict(run.data.metrics),
            tags=dict(run.data.tags),
        )

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``(step, value)`` pairs of one metric, in logging order."""
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

    def read_artifact(self, run_id: str, path: str) -> bytes:
        """The bytes of one artifact of a run (downloaded to a temporary folder, then removed)."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="detrforge-artifact-") as tmp:
            return Path(self.client.download_artifacts(run_id, path, tmp)).read_bytes()

    def read_json_artifact(self, run_id: str, path: str) -> Any:
        """One JSON artifact of a run, parsed."""
        import json

        return json.loads(self.read_artifact(run_id, path))

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        return [a.path for a in self.client.list_artifacts(run_id, path)]
