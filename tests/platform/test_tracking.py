"""The MLflow wrapper against a real (sqlite) tracking store."""

from __future__ import annotations

import json
from pathlib import Path

from detrforge.platform.tags import Tag
from detrforge.platform.tracking import Tracker


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
