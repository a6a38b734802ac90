"""Cleanup of what jobs leave on disk: finished jobs' scratch folders, the download cache."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from detrforge.control.jobs import JobService
from detrforge.platform.launcher import Launcher
from detrforge.platform.scratch import (
    MIN_KEEP_S,
    Housekeeping,
    job_scratch_dir,
    prune_cache,
    remove_finished_scratch,
    scratch_root,
)
from detrforge.platform.sources import SourcePolicy
from detrforge.platform.storage import fetch_local
from detrforge.platform.tracking import Tracker
from detrforge.registry.benchmarks import BenchmarkStore
from detrforge.registry.entities import JobState
from detrforge.registry.jobs import JobStore
from detrforge.registry.targets import TargetStore
from fixtures_cluster import free_port
from fixtures_s3 import S3Server

DAY = 24 * 3600.0


def _scratch(root: Path, job_id: str, size: int = 1000) -> Path:
    folder = job_scratch_dir(job_id, root)
    (folder / "rank0" / "ckpt").mkdir(parents=True)
    (folder / "rank0" / "ckpt" / "weights.pth").write_bytes(b"\0" * size)
    return folder


def test_the_drivers_folder_is_the_one_cleaned() -> None:
    import tempfile

    assert job_scratch_dir("ft-abc") == Path(tempfile.gettempdir()) / "detrforge-jobs" / "ft-abc"
    assert job_scratch_dir("ft-abc").parent == scratch_root()


def test_only_terminal_jobs_lose_their_scratch(tmp_path: Path) -> None:
    states = {"ft-done": True, "ft-live": False}
    done, live = _scratch(tmp_path, "ft-done"), _scratch(tmp_path, "ft-live")
    unknown = _scratch(tmp_path, "ft-other-instance")
    (tmp_path / "ft-done.txt").write_text("a file, not a job folder")

    removed = remove_finished_scratch(tmp_path, states.get)

    assert removed == [done]
    assert not done.exists()
    assert (live / "rank0" / "ckpt" / "weights.pth").is_file()
    assert (unknown / "rank0" / "ckpt" / "weights.pth").is_file()
    assert (tmp_path / "ft-done.txt").is_file()
    assert remove_finished_scratch(tmp_path / "missing", states.get) == []


def _service(
    job_store: JobStore,
    target_store: TargetStore,
    benchmark_store: BenchmarkStore,
    tmp_path: Path,
    housekeeping: Housekeeping,
) -> JobService:
    return JobService(
        job_store=job_store,
        launcher=Launcher(f"http://127.0.0.1:{free_port()}"),
        tracker=Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}"),
        artifact_root=(tmp_path / "artifacts").as_uri(),
        cache_dir=housekeeping.cache_dir,
        sources=SourcePolicy.build(roots=(tmp_path,), s3_buckets=frozenset(), artifact_root=""),
        targets=target_store,
        benchmarks=benchmark_store,
        housekeeping=housekeeping,
    )


def test_the_reconciler_removes_scratch_of_finished_jobs_only(
    job_store: JobStore,
    target_store: TargetStore,
    benchmark_store: BenchmarkStore,
    tmp_path: Path,
) -> None:
    def job(state: JobState) -> str:
        created = job_store.create(
            kind="finetune", spec={}, created_by="t", dataset_fingerprint=None
        )
        if state != JobState.PENDING:
            job_store.update(created.id, state=state)
        return created.id

    # Several jobs at once: two running, one pending, three ended (a driver killed by SIGKILL
    # leaves its folder whatever the state the reconciler records).
    live = [job(JobState.RUNNING), job(JobState.RUNNING), job(JobState.PENDING)]
    ended = [job(JobState.SUCCEEDED), job(JobState.FAILED), job(JobState.CANCELLED)]
    root = tmp_path / "scratch"
    for job_id in [*live, *ended, "sw-not-in-this-database"]:
        _scratch(root, job_id)
    housekeeping = Housekeeping(cache_dir=tmp_path / "cache", scratch_root=root, interval_s=3600)
    service = _service(job_store, target_store, benchmark_store, tmp_path, housekeeping)

    service.reconcile_all()

    assert sorted(p.name for p in root.iterdir()) == sorted([*live, "sw-not-in-this-database"])
    # Within the interval nothing runs again: a job that ends now keeps its folder until then.
    job_store.update(live[0], state=JobState.SUCCEEDED)
    service.reconcile_all()
    assert job_scratch_dir(live[0], root).is_dir()
    assert housekeeping.run(service.is_terminal, force=True)
    assert not job_scratch_dir(live[0], root).exists()
    assert job_scratch_dir(live[1], root).is_dir()


def _age(entry: Path, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(entry / "manifest.json", (stamp, stamp))


def _put(s3: S3Server, bucket: str, key: str, size: int) -> str:
    s3.client().put_object(Bucket=bucket.removeprefix("s3://"), Key=key, Body=b"x" * size)
    return f"{bucket}/{key}"


def test_cache_entries_unused_too_long_are_pruned(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache" / "datasets"
    old = fetch_local(_put(s3_server, s3_bucket, "old.pth", 1000), cache)
    recent = fetch_local(_put(s3_server, s3_bucket, "recent.pth", 1000), cache)
    _age(old.parent, 8 * DAY)
    _age(recent.parent, 2 * DAY)

    pruned = prune_cache(tmp_path / "cache", max_age_s=7 * DAY, max_bytes=10**9)

    assert pruned == [old.parent]
    assert not old.exists() and recent.is_file()
    assert (old.parent / ".lock").is_file(), "the lock stays, for a fetch waiting on it"
    # The pruned URI downloads again, through the same entry.
    assert fetch_local(f"{s3_bucket}/old.pth", cache) == old
    assert old.read_bytes() == b"x" * 1000


def test_cache_over_its_cap_loses_the_least_recently_used(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    paths = {
        name: fetch_local(_put(s3_server, s3_bucket, f"{name}.bin", 4000), cache)
        for name in ("a", "b", "c", "fresh")
    }
    for name, days in (("a", 3), ("b", 1), ("c", 2)):
        _age(paths[name].parent, days * DAY)

    # About 16 kB held, 9 kB allowed: the two least recently used go (a, then c); "fresh" was
    # used within MIN_KEEP_S and is kept even though the cache is still over a 1-byte cap.
    assert prune_cache(cache, max_age_s=30 * DAY, max_bytes=9000) == [
        paths["a"].parent,
        paths["c"].parent,
    ]
    assert [n for n, p in paths.items() if p.exists()] == ["b", "fresh"]
    prune_cache(cache, max_age_s=30 * DAY, max_bytes=1)
    assert [n for n, p in paths.items() if p.exists()] == ["fresh"]
    assert MIN_KEEP_S >= 3600


def test_an_entry_being_fetched_is_not_pruned(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    path = fetch_local(_put(s3_server, s3_bucket, "busy.pth", 100), cache)
    _age(path.parent, 30 * DAY)
    with open(path.parent / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # what fetch_local holds while it downloads
        assert prune_cache(cache, max_age_s=DAY, max_bytes=10**9) == []
        fcntl.flock(handle, fcntl.LOCK_UN)
    assert path.is_file()
    assert prune_cache(cache, max_age_s=DAY, max_bytes=10**9) == [path.parent]


def test_loose_files_and_folders_that_look_like_entries(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "staging").mkdir(parents=True)
    crashed = cache / "staging" / "0123.pth"  # a registration's copy, left by a crash
    crashed.write_bytes(b"c" * 10)
    os.utime(crashed, (time.time() - 9 * DAY, time.time() - 9 * DAY))
    current = cache / "staging" / "4567.pth"
    current.write_bytes(b"c" * 10)
    # A cached dataset that itself holds a ".lock": only the outer entry counts.
    entry = cache / "datasets" / "abcd"
    (entry / "ds" / "inner").mkdir(parents=True)
    (entry / ".lock").touch()
    (entry / "manifest.json").write_text("{}")
    (entry / "ds" / "inner" / ".lock").touch()
    (entry / "ds" / "inner" / "img.jpg").write_bytes(b"i" * 10)
    _age(entry, 2 * DAY)

    assert prune_cache(cache, max_age_s=7 * DAY, max_bytes=10**9) == [crashed]
    assert current.is_file() and (entry / "ds" / "inner" / "img.jpg").is_file()
    assert prune_cache(cache, max_age_s=DAY, max_bytes=10**9) == [entry]
    assert sorted(p.name for p in entry.iterdir()) == [".lock"]


def test_housekeeping_runs_at_start_then_every_interval(tmp_path: Path) -> None:
    housekeeping = Housekeeping(
        cache_dir=tmp_path / "cache", scratch_root=tmp_path / "scratch", interval_s=3600
    )
    assert housekeeping.run(lambda _: None) is True
    assert housekeeping.run(lambda _: None) is False
    assert housekeeping.run(lambda _: None, force=True) is True
