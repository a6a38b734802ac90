"""Inference on a trained RF-DETR checkpoint: torch eager and ONNX Runtime behind one interface.

Both predictors use rfdetr ``predict()``'s preprocessing (bytes / 255, antialias-free bilinear
resize to ``resolution x resolution``, ImageNet normalisation) and rfdetr's ``PostProcess``
(per-class sigmoid, top-k over every query/class pair, boxes scaled back to the original image
and clamped): torch eager through torch, ONNX Runtime through a numpy twin of each that agrees to
float32 rounding, so their detections differ only by the numerics of the forward pass. The
stages are separate methods so latency can time the forward pass alone.
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from PIL import Image

from detrforge.detector.data import ANNOTATION_FILE, SPLITS
from detrforge.detector.evaluation import BACKENDS, EvalResult, evaluate_coco, predictions_to_coco
from detrforge.detector.model import build_detector
from detrforge.platform.checkpoints import CHECKPOINT_SAFE_GLOBALS, class_names_in
from detrforge.platform.errors import InvalidDatasetError, InvalidSpecError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Detections",
    "OnnxPredictor",
    "Predictor",
    "RawOutputs",
    "TorchPredictor",
    "evaluate_checkpoint",
    "checkpoint_class_names",
    "label2cat_for",
    "load_inference_detector",
    "postprocess_numpy",
    "predict_split",
    "preprocess_images",
    "preprocess_images_numpy",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# COCO scores at most 100 detections per image; more only inflates the result files.
DEFAULT_MAX_DETECTIONS = 100
# Values a COCO export uses to say "this category has no parent" (rfdetr's own set).
_NO_PARENT: frozenset[Any] = frozenset({"", "none", "null", None})

ArrayT = TypeVar("ArrayT")


@dataclass(frozen=True)
class Detections:
    """One image's detections: xyxy boxes in pixels of the original image, scores, labels.

    ``labels`` are the model's contiguous class indices (map them with :func:`label2cat_for`); the
    last logit slot (``label == num_classes``) is RF-DETR's "no object" and has no category.
    """

    boxes_xyxy: np.ndarray[Any, np.dtype[np.float32]]
    scores: np.ndarray[Any, np.dtype[np.float32]]
    labels: np.ndarray[Any, np.dtype[np.int64]]

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@dataclass(frozen=True)
class RawOutputs(Generic[ArrayT]):
    """The forward pass's outputs: normalised cxcywh boxes (B, Q, 4) and class logits (B, Q, C)."""

    boxes: ArrayT
    logits: ArrayT


class Predictor(abc.ABC, Generic[ArrayT]):
    """An RF-DETR detector behind ``preprocess -> forward -> postprocess``.

    ``sizes`` are ``(height, width)`` of each original image, as rfdetr's ``target_sizes``.
    """

    backend: str
    device: str
    resolution: int
    threshold: float
    max_detections: int

    @abc.abstractmethod
    def preprocess(self, images: Sequence[Image.Image]) -> ArrayT:
        """The model input (B, 3, resolution, resolution) for ``images``, on the model's device."""

    @abc.abstractmethod
    def forward(self, batch: ArrayT) -> RawOutputs[ArrayT]:
        """The model alone on a preprocessed batch."""

    @abc.abstractmethod
    def postprocess(
        self, raw: RawOutputs[ArrayT], sizes: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        """Top-k detections per image, boxes in original-image pixels, as numpy on the host."""

    @property
    @abc.abstractmethod
    def threads(self) -> int:
        """CPU threads the forward pass may use (torch intra-op threads, or ORT intra-op)."""

    def synchronize(self) -> None:  # noqa: B027 -- a no-op unless the device runs asynchronously
        """Wait until queued device work is done, so a clock read after it is honest."""

    def predict(self, images: Sequence[Image.Image]) -> list[Detections]:
        """Detections for each image, in input order."""
        if not images:
            return []
        sizes = [(image.height, image.width) for image in images]
        return self.postprocess(self.forward(self.preprocess(images)), sizes)


# ---------------------------------------------------------------------------------------------
# Shared preprocessing and postprocessing


def _check_common(threshold: float, max_detections: int) -> None:
    if not 0.0 <= threshold < 1.0:
        raise InvalidSpecError(
            f"threshold must be in [0, 1), got {threshold}; use 0 to keep every detection for AP",
            field="threshold",
        )
    if max_detections < 1:
        raise InvalidSpecError(
            f"max_detections must be >= 1, got {max_detections}", field="max_detections"
        )


def preprocess_images(
    images: Sequence[Image.Image], resolution: int, *, device: Any = "cpu"
) -> Any:
    """rfdetr ``predict()``'s model input for PIL images, as a float32 torch tensor on ``device``.

    Bytes are divided by 255 (as ``to_tensor``), resized to ``resolution`` square with bilinear
    interpolation and no antialiasing (what rfdetr trains with), then ImageNet-normalised.
    """
    import torch
    import torchvision.transforms.functional as tvf

    if not images:
        raise InvalidSpecError("no images to preprocess", field="images")
    scale = torch.tensor(255.0, dtype=torch.float32, device=device)
    resized = []
    for image in images:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        array = np.asarray(rgb, dtype=np.uint8)
        chw = torch.from_numpy(array.transpose(2, 0, 1).copy()).to(device)
        # A tensor divisor keeps correctly rounded division on every device (rfdetr does the same).
        floats = chw.to(torch.float32).div_(scale)
        resized.append(tvf.resize(floats, [resolution, resolution], antialias=False))
    return tvf.normalize(torch.stack(resized), list(IMAGENET_MEAN), list(IMAGENET_STD))


def _resize_taps(
    in_size: int, out_size: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Half-pixel bilinear taps as torch computes them: both source indices, second weight."""
    # In float32, like torch's kernel: float64 positions would differ from it by up to ~1e-4.
    half = np.float32(0.5)
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + half) - half, np.float32(0))
    first = np.minimum(src.astype(np.intp), in_size - 1)
    second = np.minimum(first + 1, in_size - 1)
    weight = np.clip(src - first.astype(np.float32), np.float32(0), np.float32(1))
    return first, second, weight


def preprocess_images_numpy(
    images: Sequence[Image.Image], resolution: int
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """:func:`preprocess_images` in numpy alone (equal up to float32 rounding, ~1e-6).

    An ONNX Runtime pipeline then runs no torch op: torch's idle OpenMP workers spin between
    parallel regions and would compete with ORT's own thread pool.
    """
    if not images:
        raise InvalidSpecError("no images to preprocess", field="images")
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    out = np.empty((len(images), 3, resolution, resolution), dtype=np.float32)
    for n, image in enumerate(images):
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        pixels = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)  # H, W, 3
        y0, y1, wy = _resize_taps(pixels.shape[0], resolution)
        x0, x1, wx = _resize_taps(pixels.shape[1], resolution)
        wy, wx = wy[:, None, None], wx[None, :, None]
        # Horizontal pass first, then vertical: torch's order of operations.
        left, right = pixels[:, x0], pixels[:, x1]
        across = left * (1 - wx) + right * wx
        resized = across[y0] * (1 - wy) + across[y1] * wy
        out[n] = ((resized - mean) / std).transpose(2, 0, 1)
    return out


def postprocess_numpy(
    boxes_cxcywh: np.ndarray[Any, Any],
    logits: np.ndarray[Any, Any],
    sizes: Sequence[tuple[int, int]],
    *,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    threshold: float = 0.0,
) -> list[Detections]:
    """rfdetr's ``PostProcess`` in numpy (same top-k tie rule), then the score threshold.

    Args:
        boxes_cxcywh: Normalised boxes (B, Q, 4).
        logits: Class logits (B, Q, C), the last slot being "no object".
        sizes: ``(height, width)`` of each original image.
    """
    boxes_cxcywh = np.asarray(boxes_cxcywh, dtype=np.float32)
    logits = np.asarray(logits, dtype=np.float32)
    batch, _, num_slots = logits.shape
    if len(sizes) != batch or boxes_cxcywh.shape[0] != batch:
        raise InvalidSpecError(f"{len(sizes)} image sizes for a batch of {batch}", field="sizes")
    with np.errstate(over="ignore"):
        prob = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    flat = prob.reshape(batch, -1)
    k = min(max_detections, flat.shape[1])
    out: list[Detections] = []
    for i, (height, width) in enumerate(sizes):
        # Descending score, ties by ascending flat index: torch.argsort(descending, stable=True).
        order = np.argsort(-flat[i], kind="stable")[:k]
        scores = flat[i, order]
        queries, labels = np.divmod(order, num_slots)
        cx, cy, w, h = boxes_cxcywh[i, queries].T
        xyxy = np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=1)
        scale = np.array([width, height, width, height], dtype=np.float32)
        xyxy = np.minimum(np.maximum(xyxy * scale, 0.0), scale).astype(np.float32)
        keep = scores > threshold
        out.append(
            Detections(
                boxes_xyxy=np.ascontiguousarray(xyxy[keep]),
                scores=scores[keep].astype(np.float32),
                labels=labels[keep].astype(np.int64),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _read_checkpoint(checkpoint: Path) -> Mapping[str, Any]:
    import torch

    if not checkpoint.is_file():
        raise InvalidSpecError(
            f"checkpoint {checkpoint} does not exist; pass the path of a trained .pth",
            field="checkpoint",
        )
    try:
        with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
            data = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise InvalidSpecError(
            f"checkpoint {checkpoint} is not a readable RF-DETR .pth ({type(e).__name__}: {e})",
            field="checkpoint",
        ) from None
    if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping):
        raise InvalidSpecError(
            f"checkpoint {checkpoint} has no 'model' state dict; pass an RF-DETR training "
            "checkpoint such as checkpoint_best_total.pth",
            field="checkpoint",
        )
    return data


def _arch_value(data: Mapping[str, Any], key: str) -> int | None:
    for source in (data.get("model_config"), data.get("args")):
        value = source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def checkpoint_class_names(checkpoint: Path) -> list[str]:
    """The class names an rfdetr checkpoint records in its ``args`` (empty when it has none).

    Raises:
        InvalidSpecError: the file is not a readable RF-DETR checkpoint.
    """
    return class_names_in(_read_checkpoint(Path(checkpoint)))


def load_inference_detector(checkpoint: Path, size: str, resolution: int) -> Any:
    """rfdetr's detector for ``checkpoint`` (its trained head and query count) at ``resolution``.

    Raises:
        InvalidSpecError: unreadable checkpoint, or a resolution the backbone cannot take.
    """
    checkpoint = Path(checkpoint)
    data = _read_checkpoint(checkpoint)
    state = data["model"]
    # The head's width is the truth about the class count (+1 for "no object"); args can be stale.
    bias = state.get("class_embed.bias")
    num_classes = int(bias.shape[0]) - 1 if bias is not None else _arch_value(data, "num_classes")
    num_queries = _arch_value(data, "num_queries")
    group_detr = _arch_value(data, "group_detr")
    if resolution < 1:
        raise InvalidSpecError(f"resolution must be positive, got {resolution}", field="resolution")
    detector = build_detector(
        size,
        weights=checkpoint,
        num_queries=num_queries,
        group_detr=group_detr,
        num_classes=num_classes,
        resolution=resolution,
    )
    block = int(detector.model_config.patch_size) * int(detector.model_config.num_windows)
    if resolution % block:
        lower = max(block, resolution // block * block)
        raise InvalidSpecError(
            f"resolution {resolution} is not divisible by {block} (patch size x windows of "
            f"{size}); use {lower} or {lower + block}",
            field="resolution",
        )
    return detector


# ---------------------------------------------------------------------------------------------
# Predictors


class TorchPredictor(Predictor[Any]):
    """Torch eager inference with rfdetr's own module and ``PostProcess``.

    Args:
        checkpoint: An rfdetr ``.pth`` (``{"model": state_dict, "args": ...}``).
        size: ``nano``, ``small``, ``medium`` or ``large``.
        resolution: Square input side; must divide by the backbone's block (32 for these sizes).
        device: A torch device string (``cpu``, ``cuda``, ``cuda:1``).
        threshold: Keep detections scoring above this; 0 keeps everything (what AP needs).
        max_detections: Top-k query/class pairs kept per image.
        num_threads: torch intra-op threads; set process-wide, as torch only has one pool.
    """

    backend = "torch"

    def __init__(
        self,
        checkpoint: Path,
        size: str,
        resolution: int,
        *,
        device: str = "cpu",
        threshold: float = 0.0,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        num_threads: int | None = None,
    ) -> None:
        import torch
        from rfdetr.models import PostProcess

        _check_common(threshold, max_detections)
        if num_threads is not None:
            if num_threads < 1:
                raise InvalidSpecError(
                    f"num_threads must be >= 1, got {num_threads}", field="num_threads"
                )
            torch.set_num_threads(num_threads)
        self._torch_device = torch.device(device)
        if self._torch_device.type == "cuda":
            if not torch.cuda.is_available():
                raise InvalidSpecError(
                    f"device {device!r} asked for CUDA but torch sees no GPU; use device='cpu'",
                    field="device",
                )
            if self._torch_device.index is None:
                self._torch_device = torch.device("cuda", torch.cuda.current_device())
        self.detector = load_inference_detector(Path(checkpoint), size, resolution)
        # rfdetr's own predict()/export() move the (shared) module to this device on first use;
        # left at its default (CUDA when present) it would pull our CPU model onto the GPU.
        self.detector.model.device = self._torch_device
        self.model = self.detector.model.model.to(self._torch_device).eval()
        self._postprocess = PostProcess(num_select=max_detections)
        self.device = str(self._torch_device)
        self.resolution = resolution
        self.threshold = threshold
        self.max_detections = max_detections
        self.num_classes = int(self.detector.model_config.num_classes)

    @property
    def threads(self) -> int:
        import torch

        return int(torch.get_num_threads())

    def synchronize(self) -> None:
        import torch

        if self._torch_device.type == "cuda":
            torch.cuda.synchronize(self._torch_device)

    def preprocess(self, images: Sequence[Image.Image]) -> Any:
        import torch

        with torch.inference_mode():
            return preprocess_images(images, self.resolution, device=self._torch_device)

    def forward(self, batch: Any) -> RawOutputs[Any]:
        import torch

        with torch.inference_mode():
            outputs = self.model(batch)
        return RawOutputs(boxes=outputs["pred_boxes"], logits=outputs["pred_logits"])

    def postprocess(
        self, raw: RawOutputs[Any], sizes: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        import torch

        with torch.inference_mode():
            target_sizes = torch.tensor(list(sizes), device=raw.boxes.device)
            results = self._postprocess(
                {"pred_logits": raw.logits, "pred_boxes": raw.boxes}, target_sizes
            )
            out = []
            for result in results:
                keep = result["scores"] > self.threshold
                out.append(
                    Detections(
                        boxes_xyxy=result["boxes"][keep].float().cpu().numpy(),
                        scores=result["scores"][keep].float().cpu().numpy(),
                        labels=result["labels"][keep].cpu().numpy().astype(np.int64),
                    )
                )
        return out


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

        _check_common(threshold, max_detections)
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


# ---------------------------------------------------------------------------------------------
# Splits


def _load_annotations(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InvalidDatasetError(
            f"{path} is missing; each split folder needs its {ANNOTATION_FILE}", field="dataset"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidDatasetError(f"{path} is not readable JSON ({e})", field="dataset") from None
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise InvalidDatasetError(f"{path} has no 'categories' list", field="dataset")
    return data


def _category_id(category: Mapping[str, Any]) -> int | None:
    try:
        return int(category["id"])
    except (KeyError, TypeError, ValueError):
        return None


def label2cat_for(dataset_dir: Path) -> dict[int, int]:
    """Contiguous model label -> COCO category id, exactly as rfdetr assigns them in training.

    rfdetr derives the mapping from the train split for every split: categories sorted by id,
    less unannotated "grouping" parents (a category named as another one's ``supercategory``
    that no train annotation uses, e.g. the root class Roboflow exports prepend).
    """
    data = _load_annotations(Path(dataset_dir) / "train" / ANNOTATION_FILE)
    categories = [c for c in data["categories"] if isinstance(c, Mapping)]
    annotated = {
        int(a["category_id"])
        for a in data.get("annotations") or []
        if isinstance(a, Mapping) and "category_id" in a
    }
    ordered = sorted(categories, key=lambda c: (_category_id(c) is None, _category_id(c) or 0))
    parents = {
        c.get("supercategory", "none")
        for c in ordered
        if c.get("supercategory", "none") not in _NO_PARENT
        and c.get("supercategory", "none") != c.get("name")
    }
    kept = [
        c for c in ordered if not (c.get("name") in parents and _category_id(c) not in annotated)
    ]
    kept = kept or ordered
    out: dict[int, int] = {}
    for label, category in enumerate(kept):
        category_id = _category_id(category)
        if category_id is None:
            raise InvalidDatasetError(
                f"train/{ANNOTATION_FILE}: category {category!r} has no integer id",
                field="categories",
            )
        out[label] = category_id
    return out


def _split_file(dataset_dir: Path, split: str) -> Path:
    if split not in SPLITS:
        raise InvalidSpecError(
            f"unknown split {split!r}; choose one of {list(SPLITS)}", field="split"
        )
    return Path(dataset_dir) / split / ANNOTATION_FILE


def predict_split(
    predictor: Predictor[Any], dataset_dir: Path, split: str, *, batch_size: int = 1
) -> list[dict[str, Any]]:
    """COCO result dicts for every image of ``split``; labels without a category are dropped."""
    if batch_size < 1:
        raise InvalidSpecError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
    ann_file = _split_file(dataset_dir, split)
    data = _load_annotations(ann_file)
    label2cat = label2cat_for(dataset_dir)
    images = sorted(data.get("images") or [], key=lambda image: int(image["id"]))
    results: list[dict[str, Any]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pil_images = []
        for entry in chunk:
            path = ann_file.parent / str(entry["file_name"])
            try:
                with Image.open(path) as image:
                    pil_images.append(image.convert("RGB"))
            except (OSError, ValueError) as e:
                raise InvalidDatasetError(
                    f"{path} could not be read as an image ({e})", field="images"
                ) from None
        for entry, det in zip(chunk, predictor.predict(pil_images), strict=True):
            results.extend(
                predictions_to_coco(
                    int(entry["id"]), det.boxes_xyxy, det.scores, det.labels, label2cat
                )
            )
    return results


def evaluate_checkpoint(
    predictor: Predictor[Any],
    dataset_dir: Path,
    split: str,
    *,
    backend: str = "faster",
    batch_size: int = 1,
) -> EvalResult:
    """COCO bbox AP of ``predictor`` on ``split`` (``faster`` is proven equal to pycocotools)."""
    if backend not in BACKENDS:
        raise InvalidSpecError(
            f"unknown evaluation backend {backend!r}; choose one of {list(BACKENDS)}",
            field="backend",
        )
    detections = predict_split(predictor, dataset_dir, split, batch_size=batch_size)
    return evaluate_coco(_split_file(dataset_dir, split), detections, backend=backend)
