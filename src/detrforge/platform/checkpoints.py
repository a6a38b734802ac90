"""Taking in a checkpoint to register: size-capped, copied privately, read safely, time-capped.

Registration reads a file the caller names, so it must not become a way to fingerprint the
server's files: anything that is not an RF-DETR checkpoint is refused with one message that
carries neither its hash nor its size. The bytes checked are a private copy, so the file cannot
change between the check and the copy that the registry keeps.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import types
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from detrforge.platform.blobs import CHUNK_SIZE
from detrforge.platform.errors import InvalidSpecError, NotFoundError
from detrforge.platform.storage import open_store

__all__ = [
    "CHECKPOINT_SAFE_GLOBALS",
    "StagedCheckpoint",
    "class_names_in",
    "load_rfdetr_checkpoint",
    "staged_checkpoint",
]

# rfdetr's training checkpoints keep their args as a Namespace: torch.load(weights_only=True)
# admits exactly these classes besides tensors and plain containers, never arbitrary pickles.
CHECKPOINT_SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace, types.SimpleNamespace)
# Every RF-DETR detection head has it; a generic torch file does not.
_HEAD_KEY = "class_embed.bias"


@dataclass(frozen=True)
class StagedCheckpoint:
    """A private, verified copy of a checkpoint: where it is, its sha256, size and class names."""

    path: Path
    sha256: str
    size: int
    class_names: list[str]


def load_rfdetr_checkpoint(path: Path) -> Mapping[str, Any]:
    """``torch.load`` with ``weights_only=True``; the content must be an RF-DETR checkpoint.

    Raises:
        ValueError: the file is not an RF-DETR checkpoint (the message says why, for logs).
    """
    import torch

    try:
        with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means "not a checkpoint"
        raise ValueError(f"not loadable with weights_only=True ({type(exc).__name__})") from None
    model = data.get("model") if isinstance(data, Mapping) else None
    # Wrappers (DDP, EMA) may prefix the keys, so the head is looked for by suffix.
    if not isinstance(model, Mapping) or not any(str(k).endswith(_HEAD_KEY) for k in model):
        raise ValueError(f"no 'model' state dict with {_HEAD_KEY!r}")
    if not all(isinstance(value, torch.Tensor) for value in model.values()):
        raise ValueError("the 'model' state dict holds values that are not tensors")
    checkpoint: Mapping[str, Any] = data
    return checkpoint


def class_names_in(data: Mapping[str, Any]) -> list[str]:
    """The class names an rfdetr checkpoint records in its ``args`` (empty when it has none)."""
    args = data.get("args")
    names = (
        args.get("class_names") if isinstance(args, Mapping) else getattr(args, "class_names", None)
    )
    return [str(name) for name in names] if isinstance(names, list | tuple) else []


@contextlib.contextmanager
def staged_checkpoint(
    source: str, workdir: Path, *, max_bytes: int, timeout_s: float, field: str
) -> Iterator[StagedCheckpoint]:
    """A private copy of the checkpoint at ``source`` (a local path or ``s3://`` URI, already
    admitted by the source policy), verified to be an RF-DETR checkpoint; removed on exit.

    Raises:
        InvalidSpecError: nothing there, larger than ``max_bytes``, not an RF-DETR checkpoint,
            or not read within ``timeout_s``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    dest = workdir / f"{uuid.uuid4().hex}.pth"
    try:
        sha256, size = _copy(source, dest, max_bytes=max_bytes, field=field)
        data = _load_within(dest, timeout_s=timeout_s, field=field)
        yield StagedCheckpoint(path=dest, sha256=sha256, size=size, class_names=data)
    finally:
        dest.unlink(missing_ok=True)


def _too_large(source: str, max_bytes: int, field: str) -> InvalidSpecError:
    return InvalidSpecError(
        f"{field}: {source} is larger than the {max_bytes / 1024**3:.3g} GiB a checkpoint may "
        "have (max_checkpoint_bytes); register a smaller checkpoint or raise the cap",
        field=field,
    )


def _copy(source: str, dest: Path, *, max_bytes: int, field: str) -> tuple[str, int]:
    """Copy ``source`` to ``dest``; the size is checked before reading and again while copying."""
    missing = InvalidSpecError(f"{field}: {source} does not exist or is not a file", field=field)
    if source.startswith("s3://"):
        store = open_store(f"s3://{urlsplit(source).netloc}")
        try:
            if store.size(source) > max_bytes:
                raise _too_large(source, max_bytes, field)
            store.get_file(source, dest)
        except NotFoundError:
            raise missing from None
        with open(dest, "rb") as reader:
            return _hash_capped(reader, None, source, max_bytes, field)
    path = Path(source)
    if not path.is_file():
        raise missing
    if path.stat().st_size > max_bytes:
        raise _too_large(source, max_bytes, field)
    try:
        with open(path, "rb") as reader, open(dest, "wb") as writer:
            return _hash_capped(reader, writer, source, max_bytes, field)
    except OSError:
        raise InvalidSpecError(f"{field}: {source} cannot be read", field=field) from None


def _hash_capped(
    reader: BinaryIO, writer: BinaryIO | None, source: str, max_bytes: int, field: str
) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := reader.read(CHUNK_SIZE):
        size += len(chunk)
        if size > max_bytes:  # the file grew after its size was checked
            raise _too_large(source, max_bytes, field)
        digest.update(chunk)
        if writer is not None:
            writer.write(chunk)
    return digest.hexdigest(), size


def _load_within(path: Path, *, timeout_s: float, field: str) -> list[str]:
    """Load ``path`` in a worker thread and give up after ``timeout_s``; its class names."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-load")
    try:
        data = pool.submit(load_rfdetr_checkpoint, path).result(timeout=timeout_s)
    except ValueError:
        raise InvalidSpecError(
            f"{field}: not an RF-DETR checkpoint; give the .pth an RF-DETR training run wrote "
            "(a torch file with a 'model' state dict of the detector)",
            field=field,
        ) from None
    except FutureTimeout:
        raise InvalidSpecError(
            f"{field}: reading the checkpoint took longer than {timeout_s:g} s; it is not a "
            "checkpoint this server can register",
            field=field,
        ) from None
    finally:
        # A load that timed out finishes (or fails) in the background; nothing waits for it.
        pool.shutdown(wait=False)
    return class_names_in(data)
