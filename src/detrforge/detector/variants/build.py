"""Building a checkpoint's CPU inference variants from rfdetr's ONNX export.

Every variant is a folder of files (``model.onnx``, or OpenVINO's ``model.xml`` + ``model.bin``)
with a recipe: what built it, from what, with which parameters and runtime versions. Its sha256
is the artifact's: the file's own for one file; for several, the sha256 of their ``sha256sum``
listing (``<hex>  <name>`` lines sorted by name), so ``sha256sum * | sha256sum`` in the folder
checks it.

The export is done once; ``onnx-opt`` slims it with onnxslim, ``onnx-int8`` quantizes the slim
graph's ViT encoder MatMuls (the bulk of the compute; quantizing the decoder's deformable
attention and heads as well cost AP), ``openvino-*`` convert the slim graph to IR, and
``openvino-int8`` is NNCF's post-training quantization of that IR on the same calibration sample.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detrforge.detector.export import ExportResult, export_onnx
from detrforge.detector.onnx_predictor import OnnxPredictor
from detrforge.detector.predictor import Predictor
from detrforge.detector.variants.calibration import CalibrationSet
from detrforge.detector.variants.catalog import (
    CPU_VARIANTS,
    runtime_versions,
    unavailable_reason,
    variant_kind,
)
from detrforge.platform.blobs import sha256_file
from detrforge.platform.errors import InvalidSpecError

__all__ = [
    "VARIANT_PREFIX",
    "BuiltVariant",
    "SkippedVariant",
    "artifact_sha256",
    "build_variants",
    "encoder_matmuls",
    "load_predictor",
]

# Stored variants live at <artifact root>/variants/<sha256>/<files>.
VARIANT_PREFIX = "variants"
EXPORTER = "rfdetr RFDETR.export(format='onnx'), legacy torch.onnx tracer"
# The ViT encoder's blocks: rfdetr's DINOv2 backbone names them .../encoder/layer.N/...
_ENCODER_MARK = "/encoder/layer"
# onnxslim fuses a linear layer's MatMul + Add into one Gemm: both are the encoder's matmuls.
_MATMUL_OPS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class BuiltVariant:
    """A variant's folder, its primary file, content address, size, build time and recipe."""

    name: str
    runtime: str
    precision: str
    folder: Path
    model_file: str
    sha256: str
    size_bytes: int
    build_seconds: float
    recipe: dict[str, Any] = field(hash=False)

    @property
    def model_path(self) -> Path:
        return self.folder / self.model_file


@dataclass(frozen=True)
class SkippedVariant:
    """A variant that was asked for but cannot be built here, and why."""

    name: str
    reason: str


def artifact_sha256(folder: Path) -> str:
    """The content address of a variant folder (see the module docstring)."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    if len(files) == 1:
        return sha256_file(files[0])
    listing = "".join(f"{sha256_file(p)}  {p.name}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def _finish(
    name: str, folder: Path, model_file: str, started: float, recipe: dict[str, Any]
) -> BuiltVariant:
    kind = variant_kind(name)
    return BuiltVariant(
        name=name,
        runtime=kind.runtime,
        precision=kind.precision,
        folder=folder,
        model_file=model_file,
        sha256=artifact_sha256(folder),
        size_bytes=sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
        build_seconds=time.perf_counter() - started,
        recipe=recipe,
    )


def encoder_matmuls(model: Any) -> list[str]:
    """Names of the MatMul (and, once onnxslim fused the bias in, Gemm) nodes inside the ViT
    encoder's blocks of an rfdetr ONNX graph: its linear layers and attention products."""
    return [
        node.name
        for node in model.graph.node
        if node.op_type in _MATMUL_OPS and _ENCODER_MARK in node.name
    ]


class _CalibrationReader:
    """ORT's CalibrationDataReader over a calibration set (ORT calls ``get_next`` until None)."""

    def __init__(self, input_name: str, calibration: CalibrationSet) -> None:
        self._items: Iterator[dict[str, Any]] = iter(
            {input_name: array} for array in calibration.inputs
        )

    def get_next(self) -> dict[str, Any] | None:
        return next(self._items, None)


def _slim(source: Path, out: Path, *, shape_inference: bool) -> dict[str, Any]:
    import onnx
    import onnxslim

    model = onnx.load(str(source))
    before = len(model.graph.node)
    slim = onnxslim.slim(model, no_shape_infer=not shape_inference)
    onnx.save(slim, str(out))
    return {
        "tool": "onnxslim.slim",
        "shape_inference": shape_inference,
        "nodes_before": before,
        "nodes_after": len(slim.graph.node),
    }


def _quantize_ort(source: Path, out: Path, calibration: CalibrationSet) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(source), load_external_data=False)
    nodes = encoder_matmuls(model)
    if not nodes:
        raise InvalidSpecError(
            f"{source} has no ViT encoder MatMul ('{_ENCODER_MARK}') to quantize; is it an "
            "rfdetr export?",
            field="onnx_path",
        )
    input_name = model.graph.input[0].name
    params: dict[str, Any] = {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "activations": "QUInt8",
        "weights": "QInt8",
        "per_channel": True,
        "calibration_method": "MinMax",
        "op_types": list(_MATMUL_OPS),
        "scope": f"MatMul/Gemm nodes whose name contains '{_ENCODER_MARK}' (ViT encoder)",
        "quantized_nodes": len(nodes),
    }
    quantize_static(
        str(source),
        str(out),
        _CalibrationReader(input_name, calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=list(_MATMUL_OPS),
        nodes_to_quantize=nodes,
    )
    return params


def _to_openvino(source: Path, folder: Path) -> Any:
    import openvino as ov

    model = ov.convert_model(str(source))
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
    return model


def _quantize_openvino(model: Any, folder: Path, calibration: CalibrationSet) -> dict[str, Any]:
    import logging

    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    nncf.set_log_level(logging.WARNING)
    # The encoder's blocks only, as for onnx-int8: nncf ignores every node outside them.
    outside_encoder = rf"^(?!.*{_ENCODER_MARK}).*$"
    quantized = nncf.quantize(
        model,
        nncf.Dataset(list(calibration.inputs)),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration.inputs),
        ignored_scope=nncf.IgnoredScope(patterns=[outside_encoder], validate=False),
        advanced_parameters=AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1),
            disable_bias_correction=True,
        ),
    )
    ov.save_model(quantized, str(folder / "model.xml"), compress_to_fp16=False)
    return {
        "tool": "nncf.quantize",
        "model_type": "TRANSFORMER",
        "preset": "PERFORMANCE",
        "subset_size": len(calibration.inputs),
        "scope": f"nodes whose name contains '{_ENCODER_MARK}' (ViT encoder)",
        "smooth_quant": False,
        "bias_correction": False,
    }


def build_variants(
    checkpoint: Path,
    size: str,
    resolution: int,
    out_dir: Path,
    *,
    names: Sequence[str] = CPU_VARIANTS,
    calibration: CalibrationSet | None = None,
    opset: int | None = None,
    export: ExportResult | None = None,
    slim_shape_inference: bool = True,
) -> list[BuiltVariant | SkippedVariant]:
    """Build ``names`` for ``checkpoint`` under ``out_dir/<name>/``, in the catalog's order.

    Variants this machine cannot build (no CUDA, a runtime missing) come back as
    :class:`SkippedVariant` with the reason. ``export`` reuses an existing ONNX export of the
    same checkpoint and resolution instead of exporting again. ``slim_shape_inference=False``
    skips onnxslim's shape inference: ~4x faster slimming, fewer nodes folded (recorded).

    Raises:
        InvalidSpecError: an unknown variant name, or an int8 variant without ``calibration``.
    """
    wanted = [variant_kind(name, field="variants").name for name in names]
    if not wanted:
        raise InvalidSpecError("name at least one variant to build", field="variants")
    if calibration is None and any(name.endswith("-int8") for name in wanted):
        raise InvalidSpecError(
            "int8 variants need a calibration sample of the training split", field="calibration"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pins = runtime_versions()
    results: dict[str, BuiltVariant | SkippedVariant] = {}
    for name in wanted:
        reason = unavailable_reason(name)
        if reason is None and variant_kind(name).device != "cpu":
            reason = f"{name} is built on its GPU target node, not by this CPU builder"
        if reason is not None:
            results[name] = SkippedVariant(name, reason)
    buildable = [name for name in wanted if name not in results]
    if not buildable:
        return [results[name] for name in wanted]

    def folder_for(name: str) -> Path:
        folder = out_dir / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    # The fp32 export every other variant starts from.
    started = time.perf_counter()
    base_folder = folder_for("onnx-fp32")
    if export is None:
        export = export_onnx(checkpoint, size, resolution, base_folder / "model.onnx", opset=opset)
    else:
        shutil.copyfile(export.path, base_folder / "model.onnx")
    source = {
        "checkpoint_sha256": sha256_file(Path(checkpoint)),
        "size": size,
        "resolution": resolution,
        "batch": 1,
    }
    base_recipe = {
        **source,
        "exporter": EXPORTER,
        "opset": export.opset,
        "export_sha256": export.sha256,
        "pins": pins,
    }
    export_seconds = time.perf_counter() - started
    if "onnx-fp32" in buildable:
        results["onnx-fp32"] = _finish(
            "onnx-fp32",
            base_folder,
            "model.onnx",
            started,
            {**base_recipe, "runtime": {"ort_graph_optimization": "all (ORT default)"}},
        )
    slim_path = out_dir / "onnx-opt" / "model.onnx"
    slim_record: dict[str, Any] = {}
    slim_seconds = 0.0
    if any(name != "onnx-fp32" for name in buildable):
        started = time.perf_counter()
        slim_record = _slim(
            base_folder / "model.onnx",
            folder_for("onnx-opt") / "model.onnx",
            shape_inference=slim_shape_inference,
        )
        slim_seconds = time.perf_counter() - started
        # Each derived variant's build time counts the export and the slimming it starts from.
        if "onnx-opt" in buildable:
            variant = _finish(
                "onnx-opt",
                slim_path.parent,
                "model.onnx",
                started - export_seconds,
                {
                    **base_recipe,
                    "simplify": slim_record,
                    "runtime": {"ort_graph_optimization": "all"},
                },
            )
            results["onnx-opt"] = variant
    if "onnx-int8" in buildable:
        assert calibration is not None
        started = time.perf_counter() - export_seconds - slim_seconds
        folder = folder_for("onnx-int8")
        quant = _quantize_ort(slim_path, folder / "model.onnx", calibration)
        results["onnx-int8"] = _finish(
            "onnx-int8",
            folder,
            "model.onnx",
            started,
            {
                **base_recipe,
                "simplify": slim_record,
                "quantization": quant,
                "calibration": {"fingerprint": calibration.fingerprint, **calibration.record},
                "runtime": {"ort_graph_optimization": "all"},
            },
        )
    if "openvino-fp32" in buildable or "openvino-int8" in buildable:
        started = time.perf_counter() - export_seconds - slim_seconds
        folder = folder_for("openvino-fp32")
        ov_model = _to_openvino(slim_path, folder)
        convert_seconds = time.perf_counter() - started
        ov_recipe = {
            **base_recipe,
            "simplify": slim_record,
            "converter": "openvino.convert_model (from the onnxslim graph), IR fp32 weights",
            "runtime": {"device": "CPU", "inference_precision": "f32"},
        }
        if "openvino-fp32" in buildable:
            results["openvino-fp32"] = _finish(
                "openvino-fp32", folder, "model.xml", started, ov_recipe
            )
        if "openvino-int8" in buildable:
            assert calibration is not None
            started = time.perf_counter() - convert_seconds
            folder = folder_for("openvino-int8")
            quant = _quantize_openvino(ov_model, folder, calibration)
            results["openvino-int8"] = _finish(
                "openvino-int8",
                folder,
                "model.xml",
                started,
                {
                    **ov_recipe,
                    "quantization": quant,
                    "calibration": {"fingerprint": calibration.fingerprint, **calibration.record},
                },
            )
    return [results[name] for name in wanted]


def load_predictor(
    variant: BuiltVariant | str,
    model_path: Path,
    resolution: int,
    *,
    num_threads: int | None = None,
    threshold: float = 0.0,
) -> Predictor[Any]:
    """A predictor running a built variant's artifact (``model_path``) on this machine's CPU.

    Raises:
        InvalidSpecError: an unknown variant, or one that does not run on CPU here.
    """
    name = variant if isinstance(variant, str) else variant.name
    kind = variant_kind(name)
    reason = unavailable_reason(name)
    if reason is not None:
        raise InvalidSpecError(reason, field="variant")
    if kind.runtime == "onnxruntime" and kind.device == "cpu":
        return OnnxPredictor(
            model_path,
            resolution,
            providers=["CPUExecutionProvider"],
            num_threads=num_threads,
            threshold=threshold,
            graph_optimization="all",
        )
    if kind.runtime == "openvino":
        from detrforge.detector.variants.openvino_predictor import OpenVinoPredictor

        return OpenVinoPredictor(
            model_path, resolution, num_threads=num_threads, threshold=threshold
        )
    raise InvalidSpecError(
        f"{name} runs on {kind.device} with {kind.runtime}; this CPU loader cannot run it",
        field="variant",
    )
