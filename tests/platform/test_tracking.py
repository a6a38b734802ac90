"""The MLflow wrapper against a real (sqlite) tracking store."""

from __future__ import annotations

import json
from pathlib import Path

from detrforge.platform.tags import Tag
from detrforge.platform.tracking import Tracker
from fixtures_cluster import _copy_empty_mlflow_store


def test_artifacts_read_back_as_bytes_and_json(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path.as_uri())
    run_id = tracker.start_job_run("ft-1", run_name="r", params={"epochs": 2}, tags={})
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"p95_ms": 12.5, "runs": [1, 2]}))
    tracker.log_artifact(run_id, record, "benchmark")
    assert tracker.read_json_artifact(run_id, "benchmark/record.json") == {
        "p95_ms": 12.5,
        "runs": [1, 2],
    }
    assert tracker.read_artifact(run_id, "benchmark/record.json") == record.read_bytes()
    assert tracker.find_job_run("ft-1") == run_id
    assert tracker.summary(run_id).tags[Tag.JOB_ID] == "ft-1"


def test_logged_models_are_found_by_tags_only_once_ready(tmp_path: Path) -> None:
    _copy_empty_mlflow_store(tmp_path / "mlflow.db")  # a migrated store: seconds saved
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path.as_uri())
    tags = {Tag.CHECKPOINT_SHA256: "ab" * 32}
    assert tracker.find_logged_model(tags) is None
    # One whose upload never finished (still PENDING) is not found.
    tracker.client.create_logged_model(tracker.experiment_id(), name="partial", tags=tags)
    assert tracker.find_logged_model(tags) is None
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "checkpoint.pth").write_bytes(b"weights")
    logged = tracker.log_model_folder(folder, name="m", source_run_id=None, tags=tags, params={})
    assert tracker.find_logged_model(tags) == logged
    assert tracker.find_logged_model({Tag.CHECKPOINT_SHA256: "cd" * 32}) is None
    stored = Path(logged.artifact_location.removeprefix("file://")) / "checkpoint.pth"
    assert stored.read_bytes() == b"weights"
    # Our experiment's artifacts live under the artifact root with an embedded store.
    assert logged.artifact_location.startswith(f"{tmp_path.as_uri()}/mlflow/")
