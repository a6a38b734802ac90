"""Two API replicas on one registry and one Ray cluster: their reconcilers race on the same jobs
and leave one consistent state, and a job submitted under a recorded id runs once whichever
replica submits it, whenever the first one died.

Each replica is the API's own wiring (``build_services``) with its own engine, sharing the
database, the MLflow store, the artifact root and the Ray head with the other, as two processes
would. The reconciler race uses trivial real Ray jobs (``python -m this``): what races is the
registry writes, not the work.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from detrforge.api.deps import Services
from detrforge.api.main import build_services
from detrforge.detector.specs import EvaluateRequest
from detrforge.platform.cluster import LocalRayHead
from detrforge.registry.entities import Job, JobState, SystemPrincipal
from detrforge.registry.jobs import new_job_id
from fixtures_cluster import make_settings, wait_until
from fixtures_models import NANO_RESOLUTION

pytestmark = [pytest.mark.ray]

ACTOR = SystemPrincipal("test:replicas")


def _two_replicas(root: Path, database_url: str, head: LocalRayHead) -> tuple[Services, Services]:
    first = make_settings(
        root / "a",
        database_url=database_url,
        ray_address=head.dashboard_url,
        artifact_root=(root / "artifacts").as_uri(),
    )
    second = first.model_copy(update={"home": root / "b"})
    return build_services(first), build_services(second)


@pytest.fixture
def replicas(
    tmp_path: Path, database_url: str, ray_head: LocalRayHead
) -> tuple[Services, Services]:
    """Two replicas on one database (SQLite and PostgreSQL), MLflow store and Ray head."""
    return _two_replicas(tmp_path, database_url, ray_head)


@pytest.fixture
def sqlite_replicas(tmp_path: Path, ray_head: LocalRayHead) -> tuple[Services, Services]:
    """Two replicas on one SQLite database: for what depends on Ray, not on the database."""
    return _two_replicas(tmp_path, f"sqlite:///{tmp_path / 'registry.db'}", ray_head)


def _ray_job(services: Services, module: str, *args: str) -> Job:
    """A job row whose Ray job runs ``python -m module args`` (submitted as the API does)."""
    store, launcher = services.jobs.job_store, services.jobs.launcher
    job = store.create(kind="evaluate", spec={}, created_by="test", dataset_fingerprint=None)
    launcher.submit(module, list(args), submission_id=job.id)
    return store.update(job.id, ray_submission_id=job.id)


def test_two_reconcilers_racing_on_the_same_jobs_leave_one_state(
    replicas: tuple[Services, Services],
) -> None:
    a, b = replicas
    ok = _ray_job(a, "this")
    broken = _ray_job(a, "detrforge_no_such_module")
    sleeper = _ray_job(b, "timeit", "-n", "1", "-r", "1", "import time; time.sleep(120)")
    gone = a.jobs.job_store.create(
        kind="evaluate", spec={}, created_by="test", dataset_fingerprint=None
    )
    a.jobs.job_store.update(gone.id, ray_submission_id="raysubmit_never_was")
    ids = [ok.id, broken.id, sleeper.id, gone.id]
    seen: dict[str, list[Job]] = {job_id: [] for job_id in ids}
    lock = threading.Lock()
    stop = threading.Event()

    errors: list[BaseException] = []

    def reconcile_forever(replica: Services, barrier: threading.Barrier) -> None:
        try:
            while not stop.is_set():
                barrier.wait(timeout=60)  # both replicas read, then write, the same jobs at once
                for job_id in ids:
                    job = replica.jobs.reconcile(job_id)
                    with lock:
                        seen[job_id].append(job)
        except threading.BrokenBarrierError:
            return
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
            stop.set()

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=reconcile_forever, args=(r, barrier)) for r in replicas]
    for thread in threads:
        thread.start()
    try:
        wait_until(
            lambda: b.jobs.job_store.get(sleeper.id).state,
            until=lambda state: state == JobState.RUNNING,
            timeout_s=60,
            what="the sleeping job to run",
        )
        b.jobs.cancel(sleeper.id)
        final = wait_until(
            lambda: [a.jobs.job_store.get(job_id) for job_id in ids],
            until=lambda jobs: all(job.is_terminal for job in jobs),
            timeout_s=90,
            what="every job to end",
        )
    finally:
        stop.set()
        barrier.abort()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors

    assert [job.state for job in final] == [
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.FAILED,
    ]
    assert "no record of this job" in str(final[3].error)
    assert final[1].error and "exit code" in final[1].error, final[1].error
    for job in final:
        # Each change was recorded once: every terminal row either replica got back is the
        # one stored (same finish time, error and update time), never a later overwrite.
        terminal = [seen_job for seen_job in seen[job.id] if seen_job.is_terminal]
        assert terminal and all(seen_job == job for seen_job in terminal), job.id
        assert job.finished_at is not None
    running = [j for j in seen[ok.id] + seen[sleeper.id] if j.state == JobState.RUNNING]
    started = {(j.id, j.started_at) for j in running}
    assert len(started) == len({job_id for job_id, _ in started})  # one start time per job


def test_a_job_under_a_recorded_id_is_submitted_once_by_either_replica(
    sqlite_replicas: tuple[Services, Services], nano_checkpoint: Path, shapes_dataset: Path
) -> None:
    a, b = sqlite_replicas
    body = EvaluateRequest(
        checkpoint=str(nano_checkpoint),
        model_size="nano",
        resolution=NANO_RESOLUTION,
        dataset=str(shapes_dataset),
        split="valid",
    )
    launcher = a.jobs.launcher
    twice, adopted, orphan = (new_job_id("evaluate") for _ in range(3))
    try:
        # A submits, and B (taking over) submits under the same id: one Ray job.
        first = a.jobs.submit_evaluation(body, principal=ACTOR, job_id=twice)
        again = b.jobs.submit_evaluation(body, principal=ACTOR, job_id=twice)
        assert again.id == first.id == first.ray_submission_id == twice
        launcher.stop(twice)  # its work is not the point; the cluster's CPUs are shared

        # A recorded the job, Ray accepted it, A died before storing the submission: B adopts.
        _record(a, adopted)
        launcher.submit("this", [], submission_id=adopted)
        job = b.jobs.submit_evaluation(body, principal=ACTOR, job_id=adopted)
        assert job.ray_submission_id == adopted
        assert wait_until(lambda: launcher.status(adopted).status, until=_ended, timeout_s=60) == (
            "SUCCEEDED"  # it is A's `python -m this` that ran, not a second evaluation
        )

        # A recorded the job and died before Ray saw it: B submits it.
        _record(a, orphan)
        assert b.jobs.submit_evaluation(body, principal=ACTOR, job_id=orphan).ray_submission_id
        launcher.stop(orphan)

        ours = {twice, adopted, orphan}
        ray_jobs = [j.submission_id for j in launcher.client.list_jobs()]
        assert sorted(j for j in ray_jobs if j in ours) == sorted(ours)  # each exactly once
        assert {a.jobs.job_store.get(job_id).ray_submission_id for job_id in ours} == ours
    finally:
        for submission_id in (twice, orphan):
            if launcher.has_job(submission_id):
                launcher.stop(submission_id)


def _record(replica: Services, job_id: str) -> None:
    replica.jobs.job_store.create(
        kind="evaluate", spec={}, created_by="test", dataset_fingerprint=None, job_id=job_id
    )


def _ended(status: str) -> bool:
    return status in ("SUCCEEDED", "FAILED", "STOPPED")
