"""What the API sends every job besides its entrypoint: its environment, and the interpreter."""

from __future__ import annotations

import sys
from pathlib import Path

from detrforge.api.main import build_services, job_env
from detrforge.platform.settings import Settings


def test_with_s3_artifacts_no_job_env_names_the_api_machine(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = Settings(
        home=home, artifact_root="s3://bucket/df", mlflow_tracking_uri="http://mlflow:5000"
    )
    env = job_env(settings)
    assert env["DETRFORGE_ARTIFACT_ROOT"] == "s3://bucket/df"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "DETRFORGE_HOME" not in env
    assert env["RAY_task_oom_retries"] == "3"  # an OOM-killed evaluation fails, not loops
    for value in env.values():
        assert str(tmp_path) not in value and sys.prefix not in value, value


def test_with_a_local_root_jobs_share_the_api_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", artifact_root=(tmp_path / "a").as_uri())
    assert job_env(settings)["DETRFORGE_HOME"] == str(tmp_path / "home")


def test_the_api_launches_jobs_with_the_configured_python(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'registry.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        job_python="/opt/detrforge/bin/python",
    )
    launcher = build_services(settings).jobs.launcher
    assert launcher.entrypoint("detrforge.jobs.evaluate", []).startswith(
        "/opt/detrforge/bin/python -m "
    )
