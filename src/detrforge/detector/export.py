"""ONNX export of a trained RF-DETR checkpoint through rfdetr's own exporter, and a parity check.

rfdetr's exporter (``RFDETR.export(format="onnx")``) works offline on CPU: it freezes the backbone's
position embeddings to the export shape, switches the module to its tuple-returning export forward
and traces with the legacy ``torch.onnx.export`` (not dynamo). The graph has one input ``input``
[1, 3, res, res] and two outputs: ``dets`` (normalised cxcywh boxes [1, Q, 4]) and ``labels``
(class logits [1, Q, C + 1]); a segmentation model's (``seg-*`` sizes) has a third, ``masks``
(mask logits [1, Q, res / 4, res / 4]). Top-k, box scaling and mask upsampling stay outside it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detrforge.detector.torch_predictor import load_inference_detector
from detrforge.platform.blobs import sha256_file
from detrforge.platform.errors import InvalidSpecError

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "ExportResult", "compare_outputs", "export_onnx"]

# rfdetr's own default; every op of its graph exists there and TensorRT 8.6+ reads it.
DEFAULT_OPSET = 17
# GridSample (deformable attention) first exists in opset 16; 14 and 15 fail to export.
MIN_OPSET = 16


@dataclass(frozen=True)
class ExportResult:
    """An exported ``.onnx``: where, its sha256 and size, the ai.onnx opset, export wall time, and
    the graph's output names (``dets``, ``labels`` and, with a mask head, ``masks``)."""

    path: Path
    sha256: str
    size_bytes: int
    opset: int
    export_seconds: float
    outputs: tuple[str, ...] = ("dets", "labels")

    @property
    def has_masks(self) -> bool:
        """Whether the graph gives mask logits (a segmentation model's export)."""
        return "masks" in self.outputs


def _graph_facts(path: Path) -> tuple[int, tuple[str, ...]]:
    """The graph's ai.onnx opset and its output names."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    outputs = tuple(output.name for output in model.graph.output)
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version), outputs
    raise InvalidSpecError(f"{path} declares no ai.onnx opset", field="onnx_path")


def export_onnx(
    checkpoint: Path, size: str, resolution: int, out: Path, *, opset: int | None = None
) -> ExportResult:
    """Export ``checkpoint`` at a fixed [1, 3, resolution, resolution] input to ``out`` (.onnx).

    A segmentation size's graph also outputs ``masks`` (the result's ``has_masks``).
    ``export_seconds`` covers rfdetr's export (graph preparation, a sanity forward pass and the
    trace), not loading the checkpoint. ``out`` is replaced atomically.

    Raises:
        InvalidSpecError: unreadable checkpoint, bad resolution or opset, ``out`` not ``.onnx``.
    """
    out = Path(out)
    if out.suffix != ".onnx":
        raise InvalidSpecError(f"out must end in .onnx, got {out}", field="out")
    opset_version = DEFAULT_OPSET if opset is None else opset
    if opset_version < MIN_OPSET:
        raise InvalidSpecError(
            f"opset {opset_version} is too old for RF-DETR: its deformable attention exports to "
            f"GridSample, which needs opset {MIN_OPSET}; use {DEFAULT_OPSET}",
            field="opset",
        )
    detector = load_inference_detector(Path(checkpoint), size, resolution)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        started = time.perf_counter()
        written = Path(
            detector.export(
                output_dir=str(staging),
                output_name="model",
                opset_version=opset_version,
                verbose=False,
                shape=(resolution, resolution),
                batch_size=1,
                format="onnx",
            )
        )
        seconds = time.perf_counter() - started
        os.replace(written, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    opset_found, outputs = _graph_facts(out)
    return ExportResult(
        path=out,
        sha256=sha256_file(out),
        size_bytes=out.stat().st_size,
        opset=opset_found,
        export_seconds=seconds,
        outputs=outputs,
    )


def compare_outputs(
    checkpoint: Path, onnx_path: Path, size: str, resolution: int, *, seed: int = 0
) -> dict[str, float]:
    """Max |torch eager - ONNX Runtime (CPU)| of boxes and logits (and mask logits, from a
    segmentation model: ``max_abs_diff_masks``) on one seeded input.

    The input is standard-normal noise of the model's input shape: what a normalised image looks
    like to the network, without depending on any data.
    """
    import onnxruntime as ort
    import torch

    detector = load_inference_detector(Path(checkpoint), size, resolution)
    model = detector.model.model.eval()
    batch = np.random.default_rng(seed).standard_normal((1, 3, resolution, resolution))
    batch = batch.astype(np.float32)
    with torch.inference_mode():
        outputs = model(torch.from_numpy(batch))
    names = {"dets": "pred_boxes", "labels": "pred_logits"}
    if outputs.get("pred_masks") is not None:
        names["masks"] = "pred_masks"
    expected = {name: outputs[key].float().numpy() for name, key in names.items()}
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    graph_outputs = [o.name for o in session.get_outputs()]
    if "masks" in names and "masks" not in graph_outputs:
        raise InvalidSpecError(
            f"{onnx_path} has outputs {graph_outputs} but {size} has a mask head; export it from "
            "this checkpoint",
            field="onnx_path",
        )
    got = dict(zip(names, session.run(list(names), {input_name: batch}), strict=True))
    shapes = {name: np.shape(value) for name, value in got.items()}
    wanted = {name: value.shape for name, value in expected.items()}
    if shapes != wanted:
        raise InvalidSpecError(
            f"{onnx_path} outputs {shapes} but the checkpoint gives {wanted}; export it from "
            "this checkpoint at this resolution",
            field="onnx_path",
        )
    suffix = {"dets": "boxes", "labels": "logits", "masks": "masks"}
    return {
        f"max_abs_diff_{suffix[name]}": float(np.max(np.abs(got[name] - expected[name])))
        for name in names
    }
