from __future__ import annotations

import csv
import inspect as pyinspect
import io
import re
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, delete, inspect, text, update
from sqlalchemy.exc import DBAPIError

from detrforge.platform.db import alembic_config, upgrade_database
from detrforge.platform.errors import InvalidSpecError, NotFoundError
from detrforge.platform.limits import MAX_PAGE_SIZE
from detrforge.registry.benchmark_csv import from_csv, to_csv
from detrforge.registry.benchmark_fields import BENCHMARK_CSV_COLUMNS
from detrforge.registry.benchmarks import BenchmarkStore
from detrforge.registry.dbmodels import SqlBenchmarkRecord
from detrforge.registry.entities import BenchmarkRecord
from detrforge.registry.targets import TargetStore

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
SHA_A = "a" * 64
SHA_B = "b" * 64
ENVIRONMENT = {
    "detrforge": "0.1.0",
    "rfdetr": "1.2.1",
    "torch": "2.5.1",
    "python": "3.11.9",
    "cpu_count": 16,
    "cuda": None,
}
_TABLE = SqlBenchmarkRecord.__table__


def _fields(job_id: str = "be-000000000001", **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "checkpoint_uri": "s3://models/ft-1/checkpoint.pth",
        "checkpoint_sha256": SHA_A,
        "model_size": "nano",
        "target": "cpu-x86",
        "target_resources": {"hw_cpu_x86": 1},
        "node_id": "f" * 56,
        "backend": "torch",
        "precision": "fp32",
        "resolution": 384,
        "batch_size": 1,
        "warmup": 5,
        "runs": 50,
        "threads": 4,
        "device": "cpu",
        "p50_ms": 41.5,
        "p95_ms": 45.25,
        "p99_ms": 47.0,
        "mean_ms": 42.0,
        "std_ms": 1.5,
        "min_ms": 40.0,
        "max_ms": 48.0,
        "e2e_p50_ms": 50.0,
        "e2e_p95_ms": 55.0,
        "e2e_p99_ms": 58.0,
        "images_per_s": 19.5,
        "environment": ENVIRONMENT,
        "mlflow_run_id": "0123456789abcdef",
        "dataset_fingerprint": "sha256:feed",
    }
    fields.update(overrides)
    return fields


def test_add_and_get(benchmark_store: BenchmarkStore) -> None:
    before = datetime.now(UTC)
    record = benchmark_store.add(_fields())
    after = datetime.now(UTC)

    assert re.fullmatch(r"bm-[0-9a-f]{12}", record.id)
    assert before <= record.created_at <= after
    assert record.created_at.utcoffset() == timedelta(0)
    assert record.model_name is None and record.model_version is None
    assert record.target_resources == {"hw_cpu_x86": 1.0}
    assert record.environment == ENVIRONMENT
    expected = _fields()
    for name in expected.keys() - {"target_resources"}:
        assert getattr(record, name) == expected[name], name
    assert benchmark_store.get(record.id) == record
    assert benchmark_store.get_by_job("be-000000000001") == record
    assert benchmark_store.get_by_job("be-ffffffffffff") is None
    with pytest.raises(NotFoundError, match="^benchmark record bm-000000000000 not found$"):
        benchmark_store.get("bm-000000000000")


def test_add_normalizes_values(benchmark_store: BenchmarkStore) -> None:
    plus_two = timezone(timedelta(hours=2))
    record = benchmark_store.add(
        _fields(
            created_at=datetime(2025, 3, 1, 14, 0, tzinfo=plus_two),
            p50_ms=41,
            images_per_s=float("inf"),
            model_name="",
            device="",
            e2e_p50_ms=None,
            model_version=3,
        )
    )
    assert record.created_at == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert record.created_at.tzinfo is UTC
    assert record.p50_ms == 41.0 and type(record.p50_ms) is float
    assert record.images_per_s == float("inf")
    # Empty optional text is stored as None (what keeps the CSV rule unambiguous).
    assert record.model_name is None and record.device is None
    assert record.e2e_p50_ms is None and record.model_version == 3
    assert benchmark_store.get(record.id) == record


def test_add_is_idempotent_per_job(benchmark_store: BenchmarkStore) -> None:
    first = benchmark_store.add(_fields())
    again = benchmark_store.add(_fields(p95_ms=99.0, target="other"))
    assert again == first
    records, total = benchmark_store.list()
    assert total == 1 and records == [first]


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"p95_ms": None}, "p95_ms", "benchmark record field p95_ms is required"),
        ({"checkpoint_sha256": ""}, "checkpoint_sha256", "field checkpoint_sha256 is required"),
        ({"id": "bm-1"}, "id", r"unknown benchmark record field 'id' \(the store assigns it\)"),
        ({"latency": 1.0}, "latency", "unknown benchmark record field 'latency'"),
        ({"p99_ms": -1.0}, "p99_ms", "p99_ms must be a finite number >= 0, got -1.0"),
        ({"p99_ms": float("nan")}, "p99_ms", "must be a finite number >= 0"),
        ({"mean_ms": "3"}, "mean_ms", "mean_ms must be a number, not str"),
        ({"runs": 0}, "runs", r"runs must be a whole number >= 1, got 0"),
        ({"warmup": True}, "warmup", "warmup must be a whole number >= 0, got True"),
        ({"threads": 1.0}, "threads", "threads must be a whole number >= 1"),
        ({"target": 5}, "target", "target must be text, not int"),
        ({"checkpoint_sha256": "x" * 65}, "checkpoint_sha256", "at most 64 characters"),
        ({"target_resources": {}}, "target_resources", "target_resources must name"),
        ({"environment": {"torch": [2, 5]}}, "environment", r"environment\['torch'\] must be"),
        ({"environment": "torch 2.5"}, "environment", "environment must be a mapping"),
        ({"created_at": datetime(2025, 1, 1)}, "created_at", "timezone-aware"),
    ],
)
def test_add_refuses_invalid_fields(
    benchmark_store: BenchmarkStore, overrides: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidSpecError, match=message) as caught:
        benchmark_store.add(_fields(**overrides))
    assert caught.value.field == field
    assert benchmark_store.list() == ([], 0)


PAIRED = {
    "arms": {"candidate": {"p95_ms": 51.5, "n": 292}, "baseline": {"p95_ms": 50.0, "n": 292}},
    "ratio": {"p95": {"ratio": 1.03, "low": 0.97, "high": 1.09, "confidence": 0.95}},
    "verdict": "pass",
    "samples": {"orders": ["AB", "BA"], "candidate": {"model_ms": [50.1, 51.5]}},
}
NODE_LOAD = {"loadavg_1m_start": 1.5, "busiest_others": [{"name": "ray::evaluate_task"}]}


def test_a_paired_record_keeps_both_arms_and_the_nodes_load(
    benchmark_store: BenchmarkStore,
) -> None:
    record = benchmark_store.add(_fields(paired=PAIRED, node_load=NODE_LOAD))
    assert benchmark_store.get(record.id).paired == PAIRED
    assert benchmark_store.get(record.id).node_load == NODE_LOAD
    single = benchmark_store.add(_fields("be-000000000002"))
    assert (single.paired, single.node_load) == (None, None)
    # Both survive a CSV export; an export from before the columns existed still reads.
    rows = from_csv(to_csv([record, single]))
    assert [BenchmarkRecord(**row) for row in rows] == [record, single]
    table = list(csv.reader(io.StringIO(to_csv([single]))))
    keep = [i for i, column in enumerate(table[0]) if column not in ("paired", "node_load")]
    old = io.StringIO()
    csv.writer(old).writerows([[line[i] for i in keep] for line in table])
    assert [BenchmarkRecord(**row) for row in from_csv(old.getvalue())] == [single]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"paired": [1, 2]}, "paired must be a JSON object or null"),
        ({"paired": {"ratio": float("nan")}}, "paired holds a non-finite number"),
        ({"node_load": {"at": datetime(2025, 1, 1, tzinfo=UTC)}}, "node_load holds a datetime"),
    ],
)
def test_paired_documents_must_be_finite_json(
    benchmark_store: BenchmarkStore, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidSpecError, match=message) as caught:
        benchmark_store.add(_fields(**overrides))
    assert caught.value.field == next(iter(overrides))


def _history(store: BenchmarkStore) -> list[BenchmarkRecord]:
    """Six records an hour apart, oldest first, over two targets and two checkpoints."""
    specs = [
        ("cpu-x86", SHA_A, "torch", "det", 1),
        ("t4-trt", SHA_A, "tensorrt", "det", 1),
        ("cpu-x86", SHA_B, "onnxruntime", "det", 2),
        ("cpu-x86", SHA_A, "torch", None, None),
        ("t4-trt", SHA_B, "tensorrt", "det", 2),
        ("cpu-x86", SHA_B, "torch", "other", 1),
    ]
    return [
        store.add(
            _fields(
                f"be-{i:012x}",
                target=target,
                checkpoint_sha256=sha,
                backend=backend,
                model_name=model,
                model_version=version,
                created_at=T0 + timedelta(hours=i),
            )
        )
        for i, (target, sha, backend, model, version) in enumerate(specs)
    ]


def test_list_filters_newest_first_with_total(benchmark_store: BenchmarkStore) -> None:
    history = _history(benchmark_store)
    newest_first = list(reversed(history))

    assert benchmark_store.list() == (newest_first, 6)
    assert benchmark_store.list(limit=2, offset=1) == (newest_first[1:3], 6)
    assert benchmark_store.list(limit=2, offset=6) == ([], 6)
    assert benchmark_store.list(target="t4-trt") == ([history[4], history[1]], 2)
    assert benchmark_store.list(checkpoint_sha256=SHA_B) == (
        [history[5], history[4], history[2]],
        3,
    )
    assert benchmark_store.list(target="cpu-x86", checkpoint_sha256=SHA_A, limit=1) == (
        [history[3]],
        2,
    )
    assert benchmark_store.list(backend="onnxruntime") == ([history[2]], 1)
    assert benchmark_store.list(model_name="det")[1] == 4
    # since is inclusive, until exclusive.
    since, until = T0 + timedelta(hours=1), T0 + timedelta(hours=4)
    assert benchmark_store.list(since=since, until=until) == (
        [history[3], history[2], history[1]],
        3,
    )
    assert benchmark_store.list(since=T0 + timedelta(hours=5, seconds=1)) == ([], 0)
    assert benchmark_store.list(target="nope") == ([], 0)

    with pytest.raises(InvalidSpecError, match="since must be a timezone-aware datetime"):
        benchmark_store.list(since=datetime(2025, 1, 1))
    with pytest.raises(
        InvalidSpecError, match=f"limit must be between 1 and {MAX_PAGE_SIZE}$"
    ) as caught:
        benchmark_store.list(limit=0)
    assert caught.value.field == "limit"
    with pytest.raises(InvalidSpecError, match="offset must be between 0 and "):
        benchmark_store.list(offset=-1)


def _tricky_records(store: BenchmarkStore) -> list[BenchmarkRecord]:
    environments = [
        {
            "detrforge": "0.1.0",
            "torch": "2.5.1+cu121",
            "cpu_count": 16,
            "gpu_memory_mb": 15360,
            "cuda": None,
            "driver": "12",  # a string that reads as a number
            "os": "",  # an empty string
            "cudnn": "true",
            "gpu_name": 'Tesla "T4", rev\n2',
            "python": "null",
            "custom_flag": True,
            "custom_ratio": 0.1 + 0.2,
            "custom_quoted": '"x"',
            "custom_spaces": "  padded ",
            "zz_unicode": "Ünïcode ✓",
        },
        {"torch": "2.4.0", "custom_ratio": 1e-300, "cpu_count": 8},
        {},
    ]
    records = [
        store.add(
            _fields(
                "be-000000000001",
                environment=environments[0],
                p50_ms=0.1 + 0.2,
                p95_ms=123456789.12345679,
                p99_ms=5e-324,
                images_per_s=float("inf"),
                checkpoint_uri="file:///data/a b,c\"d'.pth",
                model_name='det, "quoted"',
                model_version=7,
            )
        ),
        store.add(
            _fields(
                "be-000000000002",
                environment=environments[1],
                created_at=T0,
                model_name=None,
                model_version=None,
                node_id=None,
                threads=None,
                device=None,
                e2e_p50_ms=None,
                e2e_p95_ms=None,
                e2e_p99_ms=None,
                mlflow_run_id=None,
                dataset_fingerprint=None,
                target_resources={"accelerator_type:T4": 0.001, "GPU": 1},
            )
        ),
        store.add(_fields("be-000000000003", environment=environments[2])),
    ]
    # What the database returns, not only what add() echoed.
    return [store.get(record.id) for record in records]


def test_csv_round_trip_reproduces_every_field(benchmark_store: BenchmarkStore) -> None:
    records = _tricky_records(benchmark_store)
    text = to_csv(records)

    rows = from_csv(text)
    assert [BenchmarkRecord(**row) for row in rows] == records
    for row, record in zip(rows, records, strict=True):
        for field in dataclass_fields(BenchmarkRecord):
            value, original = row[field.name], getattr(record, field.name)
            assert value == original and type(value) is type(original), field.name
        for key, original in record.environment.items():
            assert type(row["environment"][key]) is type(original), key
    assert rows[0]["environment"]["driver"] == "12"
    assert rows[0]["environment"]["os"] == ""
    assert rows[0]["environment"]["cuda"] is None
    assert "os" not in rows[1]["environment"] and rows[2]["environment"] == {}
    assert BenchmarkStore.from_csv(BenchmarkStore.to_csv(records)) == rows

    header = next(csv.reader(io.StringIO(text)))
    assert tuple(header[: len(BENCHMARK_CSV_COLUMNS)]) == BENCHMARK_CSV_COLUMNS
    # Pinned environment keys first in their usual order, then any others sorted.
    assert header[len(BENCHMARK_CSV_COLUMNS) :] == [
        "env.detrforge", "env.torch", "env.python", "env.os", "env.cpu_count", "env.cuda",
        "env.cudnn", "env.driver", "env.gpu_name", "env.gpu_memory_mb", "env.custom_flag",
        "env.custom_quoted", "env.custom_ratio", "env.custom_spaces", "env.zz_unicode",
    ]  # fmt: skip
    table = list(csv.reader(io.StringIO(text)))
    assert dict(zip(header, table[1], strict=True))["env.driver"] == '"12"'
    cells = dict(zip(header, table[2], strict=True))  # the second record
    assert cells["env.driver"] == "" and cells["env.torch"] == "2.4.0"
    assert cells["model_version"] == "" and cells["p50_ms"] == "41.5"
    assert cells["target_resources"] == '{"GPU": 1.0, "accelerator_type:T4": 0.001}'

    # Column order does not matter when reading, nor does a byte order mark.
    reordered = io.StringIO()
    writer = csv.writer(reordered)
    for line in table:
        writer.writerow(list(reversed(line)))
    assert from_csv("\ufeff" + reordered.getvalue()) == rows
    assert from_csv(to_csv([])) == []


def test_csv_rule_for_the_field_kinds(benchmark_store: BenchmarkStore) -> None:
    record = benchmark_store.add(
        _fields(created_at=T0, environment={"a": "12", "b": 12, "c": None, "d": "", "e": "x"})
    )
    line = to_csv([record]).splitlines()[1]
    cells = next(csv.reader([line]))
    by_column = dict(zip([*BENCHMARK_CSV_COLUMNS, "env.a", "env.b", "env.c", "env.d", "env.e"],
                         cells, strict=True))  # fmt: skip
    assert by_column["created_at"] == "2025-03-01T12:00:00.123456+00:00"
    assert by_column["model_name"] == ""  # None
    assert by_column["p95_ms"] == "45.25" and by_column["resolution"] == "384"
    assert [by_column[f"env.{key}"] for key in "abcde"] == ['"12"', "12", "null", '""', "x"]


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (lambda t: t.replace("p95_ms,", "", 1), "p95_ms", "lacks column 'p95_ms'"),
        (lambda t: t.replace("p95_ms,", "p95_ms,latency,", 1), "latency", "unknown .* 'latency'"),
        (lambda t: t.replace(",45.25,", ",fast,", 1), "p95_ms", "row 2, column p95_ms"),
        (lambda t: t.replace(",45.25,", ",,", 1), "p95_ms", "empty, but the field is required"),
        (lambda t: "", "csv", "benchmark CSV is empty"),
    ],
)
def test_from_csv_refuses_malformed_text(
    benchmark_store: BenchmarkStore, edit: Any, field: str, message: str
) -> None:
    text = to_csv([benchmark_store.add(_fields())])
    with pytest.raises(InvalidSpecError, match=message) as caught:
        from_csv(edit(text))
    assert caught.value.field == field


def test_summary_tracks_latency_across_versions(benchmark_store: BenchmarkStore) -> None:
    runs = [  # (target, p95, e2e p95, torch, rfdetr)
        ("cpu-x86", 10.0, 12.0, "2.4.0", "1.2.0"),
        ("cpu-x86", 8.0, 9.5, "2.5.1", "1.2.0"),
        ("t4-trt", 2.0, 3.0, "2.5.1", "1.3.0"),
        ("cpu-x86", 9.0, None, "2.5.1", "1.3.0"),
    ]
    records = [
        benchmark_store.add(
            _fields(
                f"be-{i:012x}",
                target=target,
                p95_ms=p95,
                e2e_p95_ms=e2e,
                environment={"torch": torch, "rfdetr": rfdetr},
                model_name="det",
                created_at=T0 + timedelta(days=i),
            )
        )
        for i, (target, p95, e2e, torch, rfdetr) in enumerate(runs)
    ]
    other = benchmark_store.add(
        _fields(
            "be-00000000ffff",
            checkpoint_sha256=SHA_B,
            model_name="det",
            created_at=T0 - timedelta(days=1),
        )
    )

    summary = benchmark_store.summary()
    assert summary == [
        {
            "checkpoint_sha256": SHA_A,
            "target": "cpu-x86",
            "backend": "torch",
            "precision": "fp32",
            "resolution": 384,
            "count": 3,
            "latest_p95_ms": 9.0,
            "latest_e2e_p95_ms": None,
            "latest_id": records[3].id,
            "min_p95_ms": 8.0,
            "max_p95_ms": 10.0,
            "first_created_at": T0,
            "last_created_at": T0 + timedelta(days=3),
            "torch_versions": ["2.4.0", "2.5.1"],
            "rfdetr_versions": ["1.2.0", "1.3.0"],
        },
        {
            "checkpoint_sha256": SHA_A,
            "target": "t4-trt",
            "backend": "torch",
            "precision": "fp32",
            "resolution": 384,
            "count": 1,
            "latest_p95_ms": 2.0,
            "latest_e2e_p95_ms": 3.0,
            "latest_id": records[2].id,
            "min_p95_ms": 2.0,
            "max_p95_ms": 2.0,
            "first_created_at": T0 + timedelta(days=2),
            "last_created_at": T0 + timedelta(days=2),
            "torch_versions": ["2.5.1"],
            "rfdetr_versions": ["1.3.0"],
        },
        {
            "checkpoint_sha256": SHA_B,
            "target": "cpu-x86",
            "backend": "torch",
            "precision": "fp32",
            "resolution": 384,
            "count": 1,
            "latest_p95_ms": 45.25,
            "latest_e2e_p95_ms": 55.0,
            "latest_id": other.id,
            "min_p95_ms": 45.25,
            "max_p95_ms": 45.25,
            "first_created_at": T0 - timedelta(days=1),
            "last_created_at": T0 - timedelta(days=1),
            "torch_versions": ["2.5.1"],
            "rfdetr_versions": ["1.2.1"],
        },
    ]

    by_model = benchmark_store.summary(group_by="model_name")
    assert [(g["model_name"], g["target"], g["count"]) for g in by_model] == [
        ("det", "cpu-x86", 4),
        ("det", "t4-trt", 1),
    ]
    assert by_model[0]["min_p95_ms"] == 8.0 and by_model[0]["max_p95_ms"] == 45.25
    assert by_model[0]["latest_id"] == records[3].id
    assert by_model[0]["torch_versions"] == ["2.5.1", "2.4.0"]  # first seen first
    with pytest.raises(InvalidSpecError, match="cannot group benchmarks by 'target'") as caught:
        benchmark_store.summary(group_by="target")
    assert caught.value.field == "group_by"


def test_store_has_no_update_or_delete() -> None:
    public = {name for name, _ in pyinspect.getmembers(BenchmarkStore) if not name.startswith("_")}
    assert public == {"add", "get", "get_by_job", "list", "summary", "to_csv", "from_csv"}
    for word in ("update", "delete", "remove", "set", "edit", "replace", "clear", "prune"):
        assert not [name for name in public if word in name], word


def test_database_refuses_update_and_delete(
    benchmark_store: BenchmarkStore, db_engine: Engine
) -> None:
    record = benchmark_store.add(_fields())
    statements = [
        update(_TABLE).where(_TABLE.c.id == record.id).values(p95_ms=1.0),
        update(_TABLE).values(model_name="det", model_version=1),
        delete(_TABLE).where(_TABLE.c.id == record.id),
        delete(_TABLE),
    ]
    for statement in statements:
        with pytest.raises(DBAPIError, match="benchmark_records is append-only"):
            with db_engine.begin() as connection:
                connection.execute(statement)
    if db_engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="benchmark_records is append-only: TRUNCATE"):
            with db_engine.begin() as connection:
                connection.execute(text("TRUNCATE benchmark_records"))
    assert benchmark_store.get(record.id) == record
    assert benchmark_store.list() == ([record], 1)
    # Inserting is still allowed.
    assert benchmark_store.add(_fields("be-000000000002")).job_id == "be-000000000002"


def test_history_survives_its_target(
    benchmark_store: BenchmarkStore, target_store: TargetStore
) -> None:
    target = target_store.create(
        name="t4-trt",
        description="T4",
        resources={"accelerator_type:T4": 0.001, "GPU": 1},
        backend="tensorrt",
        precision="fp16",
        batch_size=1,
        num_threads=None,
        created_by="key:alice",
    )
    record = benchmark_store.add(
        _fields(
            target=target.name,
            target_resources=target.resources,
            backend=target.backend,
            precision=target.precision,
        )
    )
    target_store.update("t4-trt", resources={"accelerator_type:A10G": 0.001, "GPU": 1})
    target_store.delete("t4-trt")
    kept = benchmark_store.get(record.id)
    assert kept == record
    assert kept.target_resources == {"accelerator_type:T4": 0.001, "GPU": 1.0}
    assert (kept.target, kept.backend, kept.precision) == ("t4-trt", "tensorrt", "fp16")


def test_migration_0002_schema_and_downgrade(
    database_url: str, db_engine: Engine, benchmark_store: BenchmarkStore
) -> None:
    inspector = inspect(db_engine)
    indexes = {index["name"]: index for index in inspector.get_indexes("benchmark_records")}
    assert indexes["ix_benchmark_records_target_created_at"]["column_names"] == [
        "target",
        "created_at",
    ]
    assert indexes["ix_benchmark_records_checkpoint_sha256"]["column_names"] == [
        "checkpoint_sha256"
    ]
    assert bool(indexes["ix_benchmark_records_job_id"]["unique"]) is True
    columns = {column["name"] for column in inspector.get_columns("benchmark_records")}
    assert columns == set(BENCHMARK_CSV_COLUMNS) | {"environment"}
    assert inspector.get_pk_constraint("hardware_targets")["constrained_columns"] == ["name"]

    # Dropping the table does not fire the append-only triggers, so downgrading works with data.
    benchmark_store.add(_fields())
    db_engine.dispose()
    command.downgrade(alembic_config(database_url), "0001")
    tables = set(inspect(db_engine).get_table_names())
    assert {"jobs", "api_keys"} <= tables
    assert not {"benchmark_records", "hardware_targets"} & tables
    upgrade_database(database_url)
    assert benchmark_store.list() == ([], 0)
    first = benchmark_store.add(_fields())
    with pytest.raises(DBAPIError, match="append-only"):
        with db_engine.begin() as connection:
            connection.execute(delete(_TABLE).where(_TABLE.c.id == first.id))


def test_csv_escapes_formula_cells_and_reads_them_back(benchmark_store: BenchmarkStore) -> None:
    formulas = ["=1+1", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\rx", "'kept"]
    records = [
        benchmark_store.add(
            _fields(
                f"be-00000000010{i}",
                model_name=formula,
                checkpoint_uri=formula,
                environment={"custom": formula},
            )
        )
        for i, formula in enumerate(formulas)
    ]
    exported = to_csv(records)
    rows = list(csv.DictReader(io.StringIO(exported)))
    for row, formula in zip(rows, formulas, strict=True):
        for column in ("model_name", "checkpoint_uri", "env.custom"):
            assert row[column] == "'" + formula, (column, row[column])
    # Numbers stay numbers.
    assert rows[0]["p50_ms"] == "41.5"
    read = from_csv(exported)
    assert [row["model_name"] for row in read] == formulas
    assert [row["environment"]["custom"] for row in read] == formulas
