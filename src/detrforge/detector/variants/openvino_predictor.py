"""OpenVINO inference of an rfdetr graph (IR or ONNX), with the same numpy pre/post-processing
as :class:`~detrforge.detector.onnx_predictor.OnnxPredictor`."""

from __future__ import annotations

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

__all__ = ["OpenVinoPredictor"]


class OpenVinoPredictor(Predictor[np.ndarray[Any, Any]]):
    """OpenVINO's CPU plugin on an rfdetr graph (input ``input``, outputs ``dets``, ``labels``).

    Args:
        model_path: An OpenVINO IR ``.xml`` (its ``.bin`` beside it) or an ``.onnx``.
        resolution: The graph's input side.
        num_threads: Inference threads; default OpenVINO's own.
        inference_precision: ``f32`` keeps fp32 (and int8 where the graph quantizes) math;
            OpenVINO would otherwise pick bf16 on CPUs that have it, changing the numbers.
    """

    backend = "openvino"

    def __init__(
        self,
        model_path: Path,
        resolution: int,
        *,
        num_threads: int | None = None,
        threshold: float = 0.0,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        inference_precision: str = "f32",
    ) -> None:
        import openvino as ov

        check_predictor_options(threshold, max_detections)
        model_path = Path(model_path)
        if not model_path.is_file():
            raise InvalidSpecError(
                f"OpenVINO model {model_path} does not exist; build the variant first",
                field="model_path",
            )
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": inference_precision,
        }
        if num_threads is not None:
            if num_threads < 1:
                raise InvalidSpecError(
                    f"num_threads must be >= 1, got {num_threads}", field="num_threads"
                )
            config["INFERENCE_NUM_THREADS"] = num_threads
        core = ov.Core()
        model = core.read_model(str(model_path))
        shape = list(model.input(0).get_partial_shape().get_max_shape())
        if len(shape) != 4 or shape[2:] != [resolution, resolution]:
            raise InvalidSpecError(
                f"{model_path} takes input {shape}, not [B, 3, {resolution}, {resolution}]; "
                "pass the resolution it was exported at",
                field="resolution",
            )
        names = {name for output in model.outputs for name in output.get_names()}
        if not {"dets", "labels"} <= names:
            raise InvalidSpecError(
                f"{model_path} has outputs {sorted(names)}; expected rfdetr's 'dets' and 'labels'",
                field="model_path",
            )
        self.compiled = core.compile_model(model, "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self._fixed_batch = int(shape[0])
        self.device = "cpu"
        self.resolution = resolution
        self.threshold = threshold
        self.max_detections = max_detections

    @property
    def threads(self) -> int:
        return self._threads

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray[Any, Any]:
        return preprocess_images_numpy(images, self.resolution)

    def forward(self, batch: np.ndarray[Any, Any]) -> RawOutputs[np.ndarray[Any, Any]]:
        if batch.shape[0] != self._fixed_batch:
            parts = [
                self.forward(batch[i : i + self._fixed_batch])
                for i in range(0, batch.shape[0], self._fixed_batch)
            ]
            return RawOutputs(
                boxes=np.concatenate([p.boxes for p in parts]),
                logits=np.concatenate([p.logits for p in parts]),
            )
        self._request.infer({0: batch})
        boxes = self._request.get_tensor("dets").data
        logits = self._request.get_tensor("labels").data
        # The request reuses its output buffers on the next run: copy them out.
        return RawOutputs(boxes=np.array(boxes), logits=np.array(logits))

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
