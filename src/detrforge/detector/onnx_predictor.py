"""ONNX Runtime inference of an rfdetr ONNX export, with numpy pre- and post-processing.

A segmentation model's export has a third output, ``masks`` (mask logits per query at a quarter
of the input side); its masks are decoded in numpy as the torch path decodes them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detrforge.detector.predictor import (
    DEFAULT_MAX_DETECTIONS,
    Detections,
    Predictor,
    RawOutputs,
    check_predictor_options,
)
from detrforge.detector.processing import (
    decode_mask_logits_numpy,
    postprocess_numpy,
    preprocess_images_numpy,
)
from detrforge.platform.errors import InvalidSpecError

__all__ = ["GRAPH_OPTIMIZATIONS", "OnnxPredictor"]

# ORT's GraphOptimizationLevel members by the names a recipe records.
GRAPH_OPTIMIZATIONS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


class OnnxPredictor(Predictor[np.ndarray[Any, Any]]):
    """ONNX Runtime inference of an rfdetr export (input ``input``, outputs ``dets``, ``labels``
    and, from a segmentation model, ``masks``).

    Args:
        onnx_path: The exported model (fixed input shape [B, 3, resolution, resolution]).
        resolution: Its input side.
        providers: ORT execution providers in preference order; default CUDA when this
            onnxruntime build has it, else CPU.
        num_threads: ORT intra-op threads; default ORT's own (one per physical core).
        allow_spinning: Let idle ORT threads busy-wait for the next run (ORT's default): lower
            forward latency, at the cost of CPU burnt between runs.
        graph_optimization: ORT's graph optimization level, one of :data:`GRAPH_OPTIMIZATIONS`;
            default ORT's own (``all``).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        onnx_path: Path,
        resolution: int,
        *,
        providers: Sequence[str] | None = None,
        num_threads: int | None = None,
        threshold: float = 0.0,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        allow_spinning: bool = True,
        graph_optimization: str | None = None,
    ) -> None:
        import onnxruntime as ort

        check_predictor_options(threshold, max_detections)
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise InvalidSpecError(
                f"ONNX model {onnx_path} does not exist; export one first", field="onnx_path"
            )
        available = ort.get_available_providers()
        if providers is None:
            wanted = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []
            providers = [*wanted, "CPUExecutionProvider"]
        unknown = [p for p in providers if p not in available]
        if unknown:
            raise InvalidSpecError(
                f"execution providers {unknown} are not in this onnxruntime build "
                f"(available: {available})",
                field="providers",
            )
        options = ort.SessionOptions()
        if num_threads is not None:
            if num_threads < 1:
                raise InvalidSpecError(
                    f"num_threads must be >= 1, got {num_threads}", field="num_threads"
                )
            options.intra_op_num_threads = num_threads
        if graph_optimization is not None:
            if graph_optimization not in GRAPH_OPTIMIZATIONS:
                raise InvalidSpecError(
                    f"graph_optimization must be one of {list(GRAPH_OPTIMIZATIONS)}, got "
                    f"{graph_optimization!r}",
                    field="graph_optimization",
                )
            options.graph_optimization_level = getattr(
                ort.GraphOptimizationLevel, GRAPH_OPTIMIZATIONS[graph_optimization]
            )
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
        )
        self.session = ort.InferenceSession(str(onnx_path), options, providers=list(providers))
        inputs = self.session.get_inputs()
        self._input_name = inputs[0].name
        shape = inputs[0].shape
        if len(shape) != 4 or shape[2:] != [resolution, resolution]:
            raise InvalidSpecError(
                f"{onnx_path} takes input {shape}, not [B, 3, {resolution}, {resolution}]; pass "
                "the resolution it was exported at",
                field="resolution",
            )
        self._fixed_batch = shape[0] if isinstance(shape[0], int) else None
        names = [o.name for o in self.session.get_outputs()]
        if "dets" not in names or "labels" not in names:
            raise InvalidSpecError(
                f"{onnx_path} has outputs {names}; expected rfdetr's 'dets' and 'labels'",
                field="onnx_path",
            )
        # A segmentation export: decode_masks gives each kept detection its mask.
        self.has_masks = "masks" in names
        self._outputs = ["dets", "labels", "masks"] if self.has_masks else ["dets", "labels"]
        self._num_threads = num_threads
        active = self.session.get_providers()[0]
        self.device = "cuda" if active == "CUDAExecutionProvider" else "cpu"
        self.resolution = resolution
        self.threshold = threshold
        self.max_detections = max_detections

    @property
    def threads(self) -> int:
        if self._num_threads is not None:
            return self._num_threads
        try:
            import psutil

            return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
        except ImportError:
            return os.cpu_count() or 1

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray[Any, Any]:
        return preprocess_images_numpy(images, self.resolution)

    def forward(self, batch: np.ndarray[Any, Any]) -> RawOutputs[np.ndarray[Any, Any]]:
        if self._fixed_batch is not None and batch.shape[0] != self._fixed_batch:
            # A static-batch export runs one image (or one fixed-size group) at a time.
            parts = [
                self.forward(batch[i : i + self._fixed_batch])
                for i in range(0, batch.shape[0], self._fixed_batch)
            ]
            masks = [p.masks for p in parts if p.masks is not None]
            return RawOutputs(
                boxes=np.concatenate([p.boxes for p in parts]),
                logits=np.concatenate([p.logits for p in parts]),
                masks=np.concatenate(masks) if masks else None,
            )
        outputs = self.session.run(self._outputs, {self._input_name: batch})
        return RawOutputs(
            boxes=np.asarray(outputs[0]),
            logits=np.asarray(outputs[1]),
            masks=np.asarray(outputs[2]) if self.has_masks else None,
        )

    def postprocess(
        self, raw: RawOutputs[np.ndarray[Any, Any]], sizes: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        return postprocess_numpy(
            raw.boxes,
            raw.logits,
            sizes,
            max_detections=self.max_detections,
            threshold=self.threshold,
            with_queries=self.has_masks,
        )

    def _image_masks(
        self,
        masks: np.ndarray[Any, Any],
        image: int,
        queries: np.ndarray[Any, Any],
        height: int,
        width: int,
    ) -> np.ndarray[Any, np.dtype[np.bool_]]:
        return decode_mask_logits_numpy(masks[image][queries], height, width)
