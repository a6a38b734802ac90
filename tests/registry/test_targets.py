from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from detrforge.platform.errors import ConflictError, InvalidSpecError, NotFoundError
from detrforge.registry.entities import HardwareTarget
from detrforge.registry.targets import TargetStore, check_resources

T4 = {"accelerator_type:T4": 0.001, "GPU": 1}


def _fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": "t4-trt-fp16",
        "description": "NVIDIA T4, TensorRT, fp16",
        "resources": T4,
        "backend": "tensorrt",
        "precision": "fp16",
        "batch_size": 1,
        "num_threads": None,
        "created_by": "key:alice",
    }
    fields.update(overrides)
    return fields


def test_create_and_get(target_store: TargetStore) -> None:
    before = datetime.now(UTC)
    target = target_store.create(**_fields())
    after = datetime.now(UTC)

    assert isinstance(target, HardwareTarget)
    assert target.name == "t4-trt-fp16"
    assert target.description == "NVIDIA T4, TensorRT, fp16"
    assert target.resources == {"accelerator_type:T4": 0.001, "GPU": 1.0}
    assert all(type(quantity) is float for quantity in target.resources.values())
    assert (target.backend, target.precision, target.batch_size) == ("tensorrt", "fp16", 1)
    assert target.num_threads is None
    assert target.created_by == "key:alice"
    assert before <= target.created_at <= after
    assert target.created_at.utcoffset() == timedelta(0)
    assert target.updated_at == target.created_at
    assert target_store.get("t4-trt-fp16") == target

    cpu = target_store.create(
        **_fields(name="cpu_x86.4t", resources={"hw_cpu_x86": 1}, backend="onnxruntime")
        | {"precision": "fp32", "batch_size": 4, "num_threads": 4}
    )
    assert cpu.resources == {"hw_cpu_x86": 1.0}
    assert (cpu.backend, cpu.batch_size, cpu.num_threads) == ("onnxruntime", 4, 4)
    with pytest.raises(AttributeError):
        cpu.name = "other"  # type: ignore[misc]


def test_list_is_sorted_by_name(target_store: TargetStore) -> None:
    assert target_store.list() == []
    for name in ("zeta", "alpha", "m1.large"):
        target_store.create(**_fields(name=name))
    assert [target.name for target in target_store.list()] == ["alpha", "m1.large", "zeta"]


def test_duplicate_name_conflicts(target_store: TargetStore) -> None:
    first = target_store.create(**_fields())
    with pytest.raises(ConflictError, match="^hardware target t4-trt-fp16 exists") as caught:
        target_store.create(**_fields(description="another"))
    assert caught.value.code == "CONFLICT"
    assert caught.value.field == "name"
    assert target_store.list() == [first]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "T4 GPU", "hardware target name 'T4 GPU' is invalid: use 1 to 63 lower-case"),
        ("name", "-t4", "hardware target name '-t4' is invalid"),
        ("name", "", "hardware target name '' is invalid"),
        ("name", "a" * 64, "is invalid"),
        ("description", None, "description must be text"),
        ("resources", {}, "resources must name at least one Ray resource"),
        ("resources", ["GPU"], "resources must name at least one Ray resource"),
        ("resources", {"GPU": 0}, r"resources\['GPU'\] must be a finite quantity of at least"),
        ("resources", {"CPU": -1}, "must be a finite quantity"),
        ("resources", {"CPU": math.inf}, "must be a finite quantity"),
        ("resources", {"CPU": 0.00001}, r"at least 0.0001 \(Ray's resource unit\)"),
        ("resources", {"GPU": 1.5}, r"resources\['GPU'\] above 1 must be a whole number"),
        ("resources", {"GPU": "1"}, r"resources\['GPU'\] must be a number, not str"),
        ("resources", {"GPU": True}, "must be a number, not bool"),
        ("resources", {" ": 1}, "empty or non-text resource name"),
        ("backend", "tflite", "unknown backend 'tflite': use one of torch, onnxruntime, "),
        ("precision", "int8", "unknown precision 'int8': use one of fp32, fp16, bf16"),
        ("batch_size", 0, "batch_size must be a whole number from 1 to 256, got 0"),
        ("batch_size", 257, "got 257"),
        ("batch_size", True, "got True"),
        ("batch_size", 2.0, "got 2.0"),
        ("num_threads", 0, "num_threads must be a whole number from 1 to 256, or None"),
        ("created_by", "", "created_by must be 1 to 255 characters"),
    ],
)
def test_invalid_fields_name_the_field(
    target_store: TargetStore, field: str, value: object, message: str
) -> None:
    with pytest.raises(InvalidSpecError, match=message) as caught:
        target_store.create(**_fields(**{field: value}))
    assert caught.value.field == field
    assert caught.value.code == "INVALID_SPEC"
    assert target_store.list() == []


def test_check_resources_names_the_given_field() -> None:
    assert check_resources({"CPU": 2, "GPU": 0.5}) == {"CPU": 2.0, "GPU": 0.5}
    with pytest.raises(InvalidSpecError, match="target_resources must name") as caught:
        check_resources({}, field="target_resources")
    assert caught.value.field == "target_resources"


def test_update_changes_fields_and_updated_at(target_store: TargetStore) -> None:
    created = target_store.create(**_fields())
    updated = target_store.update(
        "t4-trt-fp16",
        description="T4 (g4dn)",
        resources={"accelerator_type:T4": 0.001, "GPU": 2},
        batch_size=8,
        num_threads=2,
    )
    assert updated.description == "T4 (g4dn)"
    assert updated.resources == {"accelerator_type:T4": 0.001, "GPU": 2.0}
    assert (updated.batch_size, updated.num_threads) == (8, 2)
    assert (updated.backend, updated.precision) == ("tensorrt", "fp16")
    assert updated.created_at == created.created_at
    assert updated.updated_at > created.updated_at
    assert target_store.get("t4-trt-fp16") == updated

    cleared = target_store.update("t4-trt-fp16", num_threads=None, backend="torch_compiled")
    assert (cleared.num_threads, cleared.backend) == (None, "torch_compiled")
    assert target_store.update("t4-trt-fp16") == cleared


def test_update_refuses_the_name_and_invalid_values(target_store: TargetStore) -> None:
    created = target_store.create(**_fields())
    with pytest.raises(InvalidSpecError, match="field 'name' cannot be updated") as caught:
        target_store.update("t4-trt-fp16", name="t4")
    assert caught.value.field == "name"
    with pytest.raises(InvalidSpecError, match="field 'created_by' cannot be updated"):
        target_store.update("t4-trt-fp16", created_by="key:mallory")
    with pytest.raises(InvalidSpecError, match="unknown precision 'fp8'") as caught:
        target_store.update("t4-trt-fp16", description="changed", precision="fp8")
    assert caught.value.field == "precision"
    assert target_store.get("t4-trt-fp16") == created


def test_unknown_target_is_not_found(target_store: TargetStore) -> None:
    for call in (
        lambda: target_store.get("nope"),
        lambda: target_store.update("nope", batch_size=2),
        lambda: target_store.delete("nope"),
    ):
        with pytest.raises(NotFoundError, match="^hardware target nope not found$"):
            call()


def test_delete_then_recreate(target_store: TargetStore) -> None:
    target_store.create(**_fields())
    target_store.create(**_fields(name="cpu"))
    assert target_store.delete("t4-trt-fp16") is None
    assert [target.name for target in target_store.list()] == ["cpu"]
    with pytest.raises(NotFoundError):
        target_store.get("t4-trt-fp16")
    again = target_store.create(**_fields(backend="torch"))
    assert again.backend == "torch"
