from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from detrforge.platform.errors import InvalidSpecError, NotFoundError
from detrforge.registry.entities import JobState
from detrforge.registry.jobs import JobStore

SPEC = {"size": "nano", "resolution": 128, "epochs": 2, "classes": ["square"]}


def _create(store: JobStore, kind: str = "finetune", **overrides: object) -> str:
    fields: dict[str, object] = {
        "kind": kind,
        "spec": SPEC,
        "created_by": "key:alice",
        "dataset_fingerprint": "sha256:abc",
    }
    fields.update(overrides)
    return store.create(**fields).id  # type: ignore[arg-type]


def test_job_states() -> None:
    terminal = {state for state in JobState if state.is_terminal}
    assert terminal == {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    assert JobState("RUNNING") is JobState.RUNNING
    assert JobState.CANCELLING.is_terminal is False


def test_create_and_get(job_store: JobStore) -> None:
    before = datetime.now(UTC)
    job = job_store.create(
        kind="finetune", spec=SPEC, created_by="key:alice", dataset_fingerprint="sha256:abc"
    )
    after = datetime.now(UTC)

    assert re.fullmatch(r"ft-[0-9a-f]{12}", job.id)
    assert job.kind == "finetune"
    assert job.state is JobState.PENDING
    assert job.spec == SPEC
    assert job.created_by == "key:alice"
    assert job.dataset_fingerprint == "sha256:abc"
    assert job.progress == {} and job.metrics == {}
    assert job.ray_submission_id is None and job.error is None and job.model_uri is None
    assert job.started_at is None and job.finished_at is None
    assert before <= job.created_at <= after
    assert job.created_at.utcoffset() == timedelta(0)

    fetched = job_store.get(job.id)
    assert fetched == job
    assert fetched.created_at.tzinfo is not None
    assert fetched.updated_at == fetched.created_at


def test_ids_use_a_prefix_per_kind(job_store: JobStore) -> None:
    assert re.fullmatch(r"sw-[0-9a-f]{12}", _create(job_store, "sweep"))
    assert re.fullmatch(r"be-[0-9a-f]{12}", _create(job_store, "benchmark"))
    with pytest.raises(InvalidSpecError, match="job kind 'Fine Tune' is invalid") as caught:
        _create(job_store, "Fine Tune")
    assert caught.value.field == "kind"


def test_get_unknown_job_raises_not_found(job_store: JobStore) -> None:
    with pytest.raises(NotFoundError, match="^job ft-000000000000 not found$") as caught:
        job_store.get("ft-000000000000")
    assert caught.value.code == "NOT_FOUND"
    with pytest.raises(NotFoundError, match="job nope not found"):
        job_store.update("nope", state=JobState.RUNNING)


def test_list_pages_newest_first_with_filters_and_total(job_store: JobStore) -> None:
    finetunes = [_create(job_store, "finetune") for _ in range(5)]
    sweeps = [_create(job_store, "sweep") for _ in range(2)]
    job_store.update(finetunes[1], state=JobState.RUNNING)
    job_store.update(sweeps[0], state=JobState.RUNNING)
    newest_first = list(reversed(finetunes + sweeps))

    page, total = job_store.list(limit=3)
    assert total == 7
    assert [job.id for job in page] == newest_first[:3]

    page, total = job_store.list(limit=3, offset=3)
    assert total == 7
    assert [job.id for job in page] == newest_first[3:6]

    page, total = job_store.list(limit=3, offset=6)
    assert [job.id for job in page] == newest_first[6:]

    page, total = job_store.list(offset=50)
    assert (page, total) == ([], 7)

    page, total = job_store.list(kind="finetune", limit=2, offset=1)
    assert total == 5
    assert [job.id for job in page] == list(reversed(finetunes))[1:3]

    page, total = job_store.list(state=JobState.RUNNING)
    assert total == 2
    assert [job.id for job in page] == [sweeps[0], finetunes[1]]

    page, total = job_store.list(state=JobState.RUNNING, kind="sweep")
    assert (total, [job.id for job in page]) == (1, [sweeps[0]])

    page, total = job_store.list(kind="export")
    assert (page, total) == ([], 0)

    with pytest.raises(InvalidSpecError) as caught:
        job_store.list(limit=0)
    assert caught.value.field == "limit"


def test_update_records_fields(job_store: JobStore) -> None:
    job_id = _create(job_store)
    created = job_store.get(job_id)
    started = datetime(2024, 3, 1, 10, 0, 0, tzinfo=timezone(timedelta(hours=1)))

    job = job_store.update(
        job_id,
        state=JobState.RUNNING,
        ray_submission_id="raysubmit_abc",
        mlflow_run_id="0123456789abcdef",
        progress={"step": 10, "of": 100},
        metrics={"train/loss": 1.25},
        started_at=started,
    )
    assert job.state is JobState.RUNNING
    assert job.ray_submission_id == "raysubmit_abc"
    assert job.mlflow_run_id == "0123456789abcdef"
    assert job.progress == {"step": 10, "of": 100}
    assert job.metrics == {"train/loss": 1.25}
    assert job.started_at == datetime(2024, 3, 1, 9, 0, 0, tzinfo=UTC)
    assert job.updated_at > created.updated_at
    assert job.created_at == created.created_at
    assert job_store.get(job_id) == job

    job = job_store.update(
        job_id,
        state=JobState.SUCCEEDED,
        metrics={"bbox/AP": 0.5045806987249628},
        checkpoint_uri="s3://bucket/ft/checkpoint.pth",
        model_sha256="ab" * 32,
        model_uri="runs:/0123456789abcdef/model",
        finished_at=datetime(2024, 3, 1, 9, 30, tzinfo=UTC),
    )
    assert job.state is JobState.SUCCEEDED
    assert job.metrics == {"bbox/AP": 0.5045806987249628}
    assert job.checkpoint_uri == "s3://bucket/ft/checkpoint.pth"
    assert job.model_sha256 == "ab" * 32
    assert job.model_uri == "runs:/0123456789abcdef/model"
    assert job.finished_at == datetime(2024, 3, 1, 9, 30, tzinfo=UTC)


def test_update_rejects_unknown_fields_and_bad_values(job_store: JobStore) -> None:
    job_id = _create(job_store)
    with pytest.raises(TypeError, match="cannot update job field\\(s\\): created_by, kind"):
        job_store.update(job_id, kind="sweep", created_by="mallory")
    with pytest.raises(ValueError):
        job_store.update(job_id, state="EXPLODED")
    with pytest.raises(TypeError, match="timezone-aware"):
        job_store.update(job_id, started_at=datetime(2024, 1, 1))
    with pytest.raises(TypeError, match="must be a dict"):
        job_store.update(job_id, progress=[1, 2])
    assert job_store.get(job_id).state is JobState.PENDING


@pytest.mark.parametrize("final", [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED])
def test_terminal_state_is_final(job_store: JobStore, final: JobState) -> None:
    job_id = _create(job_store)
    job_store.update(job_id, state=JobState.RUNNING)
    done = job_store.update(job_id, state=final, error="boom" if final is JobState.FAILED else None)
    assert done.state is final

    for state in JobState:
        if state is final:
            continue
        unchanged = job_store.update(job_id, state=state, error="late writer")
        assert unchanged == done
    assert job_store.get(job_id) == done

    # Without a state change (or with the same final state), details may still be recorded.
    later = job_store.update(job_id, state=final, metrics={"bbox/AP": 0.25})
    assert later.state is final
    assert later.metrics == {"bbox/AP": 0.25}


def test_a_job_recorded_under_a_chosen_id_exists_once(job_store: JobStore) -> None:
    assert job_store.find("ev-0123456789ab") is None
    first = job_store.create(
        kind="evaluate",
        spec=SPEC,
        created_by="key:a",
        dataset_fingerprint=None,
        job_id="ev-0123456789ab",
    )
    job_store.update(first.id, ray_submission_id=first.id)
    # Recorded again under that id (a replica resuming a submission): the job on record.
    again = job_store.create(
        kind="evaluate", spec={}, created_by="key:b", dataset_fingerprint=None, job_id=first.id
    )
    assert again == job_store.get(first.id) == job_store.find(first.id)
    assert (again.created_by, again.ray_submission_id) == ("key:a", first.id)
    assert job_store.list(kind="evaluate")[1] == 1


def test_an_update_expecting_a_state_applies_only_in_that_state(job_store: JobStore) -> None:
    job_id = _create(job_store)
    started = datetime(2026, 1, 1, tzinfo=UTC)
    first = job_store.update(
        job_id, expected_state=JobState.PENDING, state=JobState.RUNNING, started_at=started
    )
    # A second reconciler that also read PENDING saw the same change: its write is ignored.
    second = job_store.update(
        job_id,
        expected_state=JobState.PENDING,
        state=JobState.RUNNING,
        started_at=started + timedelta(seconds=1),
    )
    assert second == first and second.started_at == started
    done = job_store.update(
        job_id, expected_state=JobState.RUNNING, state=JobState.SUCCEEDED, metrics={"a": 1.0}
    )
    late = job_store.update(
        job_id, expected_state=JobState.RUNNING, state=JobState.SUCCEEDED, metrics={"a": 2.0}
    )
    assert late == done and late.metrics == {"a": 1.0}


def test_list_nonterminal(job_store: JobStore) -> None:
    pending = _create(job_store)
    running = _create(job_store)
    cancelling = _create(job_store)
    done = _create(job_store)
    failed = _create(job_store, "evaluate")
    job_store.update(running, state=JobState.RUNNING)
    job_store.update(cancelling, state=JobState.CANCELLING)
    job_store.update(done, state=JobState.SUCCEEDED)
    job_store.update(failed, state=JobState.FAILED, error="out of memory")

    jobs = job_store.list_nonterminal()
    assert [job.id for job in jobs] == [pending, running, cancelling]
    assert [job.state for job in jobs] == [
        JobState.PENDING,
        JobState.RUNNING,
        JobState.CANCELLING,
    ]
