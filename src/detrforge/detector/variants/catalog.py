"""The inference variants detrforge can build, what each needs, and whether this machine has it.

A variant is one way to run a version's checkpoint: a runtime (ONNX Runtime, OpenVINO, torch,
TensorRT), a precision and the graph transformations applied to rfdetr's ONNX export. CPU
variants are built from that export; GPU variants are declared with their requirement and refused
with the reason where it is not met (no CUDA, no TensorRT), never silently replaced.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata

from detrforge.platform.errors import InvalidSpecError

__all__ = [
    "CPU_VARIANTS",
    "GPU_VARIANTS",
    "VARIANTS",
    "VariantKind",
    "runtime_versions",
    "unavailable_reason",
    "variant_kind",
]


@dataclass(frozen=True)
class VariantKind:
    """A variant's name, runtime, precision, device and the Python modules it needs."""

    name: str
    runtime: str
    precision: str
    device: str
    description: str
    modules: tuple[str, ...]


_EXTRA_HINT = "install detrforge's `variants` extra: pip install 'detrforge[variants]'"

VARIANTS: tuple[VariantKind, ...] = (
    VariantKind(
        "onnx-fp32",
        "onnxruntime",
        "fp32",
        "cpu",
        "rfdetr's ONNX export on ONNX Runtime's CPU provider (ORT's default optimizations)",
        ("onnxruntime",),
    ),
    VariantKind(
        "onnx-opt",
        "onnxruntime",
        "fp32",
        "cpu",
        "the export simplified by onnxslim, run with ORT_ENABLE_ALL graph optimizations",
        ("onnxruntime", "onnxslim"),
    ),
    VariantKind(
        "onnx-int8",
        "onnxruntime",
        "int8",
        "cpu",
        "onnx-opt with the ViT encoder's MatMuls statically quantized to int8 (QDQ), "
        "calibrated on a sample of the training split",
        ("onnxruntime", "onnxslim"),
    ),
    VariantKind(
        "openvino-fp32",
        "openvino",
        "fp32",
        "cpu",
        "the export converted to OpenVINO IR, run on OpenVINO's CPU plugin at f32",
        ("openvino", "onnxslim"),
    ),
    VariantKind(
        "openvino-int8",
        "openvino",
        "int8",
        "cpu",
        "OpenVINO IR quantized to int8 by NNCF post-training quantization on the calibration "
        "sample",
        ("openvino", "nncf", "onnxslim"),
    ),
    VariantKind(
        "torch-fp16",
        "torch",
        "fp16",
        "cuda",
        "torch eager under CUDA fp16 autocast",
        ("torch",),
    ),
    VariantKind(
        "torch-bf16",
        "torch",
        "bf16",
        "cuda",
        "torch eager under CUDA bf16 autocast",
        ("torch",),
    ),
    VariantKind(
        "onnx-cuda",
        "onnxruntime",
        "fp32",
        "cuda",
        "the export on ONNX Runtime's CUDA execution provider",
        ("onnxruntime",),
    ),
    VariantKind(
        "onnx-tensorrt",
        "onnxruntime",
        "fp16",
        "cuda",
        "the export on ONNX Runtime's TensorRT execution provider, fp16",
        ("onnxruntime", "tensorrt"),
    ),
    VariantKind(
        "tensorrt-fp16",
        "tensorrt",
        "fp16",
        "cuda",
        "a TensorRT fp16 engine built on the target node (tied to its GPU and TensorRT version)",
        ("tensorrt",),
    ),
)
CPU_VARIANTS = tuple(kind.name for kind in VARIANTS if kind.device == "cpu")
GPU_VARIANTS = tuple(kind.name for kind in VARIANTS if kind.device == "cuda")
_BY_NAME = {kind.name: kind for kind in VARIANTS}
# ORT's own provider names: the GPU variants that run on ONNX Runtime need its GPU build.
_ORT_PROVIDER = {"onnx-cuda": "CUDAExecutionProvider", "onnx-tensorrt": "TensorrtExecutionProvider"}


def variant_kind(name: str, *, field: str = "variant") -> VariantKind:
    """The catalog entry named ``name``.

    Raises:
        InvalidSpecError: no such variant.
    """
    kind = _BY_NAME.get(name)
    if kind is None:
        raise InvalidSpecError(
            f"unknown variant {name!r}; choose one of {list(_BY_NAME)}", field=field
        )
    return kind


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def unavailable_reason(name: str) -> str | None:
    """Why ``name`` cannot be built and run on this machine, or None when it can."""
    kind = variant_kind(name)
    missing = [m for m in kind.modules if importlib.util.find_spec(m) is None]
    if kind.device == "cuda" and not _cuda_available():
        return f"{name} needs an NVIDIA GPU with CUDA; torch sees none on this machine"
    if missing:
        hint = "install TensorRT on the GPU node" if "tensorrt" in missing else _EXTRA_HINT
        return f"{name} needs the Python modules {missing}, which are not installed; {hint}"
    provider = _ORT_PROVIDER.get(name)
    if provider is not None:
        import onnxruntime as ort

        if provider not in ort.get_available_providers():
            return (
                f"{name} needs ONNX Runtime's {provider}, which this onnxruntime build lacks "
                "(install onnxruntime-gpu on the GPU node)"
            )
    return None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def runtime_versions() -> dict[str, str | None]:
    """The versions that decide what a variant's artifact is and how it runs (its pins)."""
    return {
        name: _version(name)
        for name in ("rfdetr", "torch", "onnx", "onnxruntime", "onnxslim", "openvino", "nncf")
    }
