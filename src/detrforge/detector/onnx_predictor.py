"""ONNX Runtime inference of an rfdetr ONNX export, with numpy pre- and post-processing."""

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
from detrforge.detector.processing import postprocess_numpy, preprocess_images_numpy
from detrforge.platform.errors import InvalidSpecError

__all__ = ["OnnxPredictor"]


class OnnxPredictor(Predictor[np.ndarray[Any, Any]]):
    """ONNX Runtime inference of an rfdetr export (input ``input``, outputs ``dets``, ``labels``).

    Args:
        onnx_path: The exported model (fixed input shape [B, 3, resolution, resolution]).
        resolution: Its input side.
        providers: ORT execution providers in preference order; default CUDA when this
            onnxruntime build has it, else CPU.
        num_threads: ORT intra-op threads; default ORT's own (one per physical core).
        allow_spinning: Let idle ORT threads busy-wait for the next run (ORT's default): lower
            forward latency, at the cost of CPU burnt between runs.
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
            return RawOutputs(
                boxes=np.concatenate([p.boxes for p in parts]),
                logits=np.concatenate([p.logits for p in parts]),
            )
        boxes, logits = self.session.run(["dets", "labels"], {self._input_name: batch})
        return RawOutputs(boxes=np.asarray(boxes), logits=np.asarray(logits))

    def postprocess(
        self, raw: RawOutputs[np.ndarray[Any, Any]], sizes: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        return postprocess_numpy(
            raw.boxes,
            raw.logits,
            sizes,
            max_detections=self.max_detections,
            threshold=self.threshold,
        )
