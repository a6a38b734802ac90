"""Content addressing: the sha256 of a file, and where a blob with a given sha256 lives.

Registered checkpoints are stored once at ``<artifact root>/blobs/sha256/<hex>``
(:meth:`~detrforge.platform.artifact_store.ArtifactStore.put_blob`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from detrforge.platform.errors import NotFoundError, StorageError

__all__ = ["BLOB_PREFIX", "CHUNK_SIZE", "blob_key", "blob_sha256", "sha256_file"]

CHUNK_SIZE = 1024 * 1024
# Content-addressed objects (registered checkpoints) live at <root>/blobs/sha256/<hex>.
BLOB_PREFIX = "blobs/sha256"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                digest.update(chunk)
    except FileNotFoundError:
        raise NotFoundError(f"no local file at {path}") from None
    except OSError as exc:
        raise StorageError(f"could not read {path}: {exc}") from exc
    return digest.hexdigest()


def blob_sha256(uri: str) -> str | None:
    """The sha256 a content-addressed blob URI (``.../blobs/sha256/<hex>``) names, else None."""
    head, _, name = uri.rpartition("/")
    if head.endswith(f"/{BLOB_PREFIX}") and _SHA256_HEX.fullmatch(name):
        return name
    return None


def blob_key(sha256: str) -> str:
    """The key, relative to an artifact root, of the blob whose bytes hash to ``sha256``.

    Raises:
        StorageError: ``sha256`` is not a lowercase hex sha256.
    """
    if not _SHA256_HEX.fullmatch(sha256):
        raise StorageError(f"{sha256!r} is not a hex sha256")
    return f"{BLOB_PREFIX}/{sha256}"
