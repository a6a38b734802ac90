"""The one error hierarchy of detrforge.

Every error has a stable ``code``; the API maps codes to HTTP statuses in exactly one place
(``detrforge.api.errors``). Errors pickle, so they survive crossing a Ray worker boundary.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ClusterError",
    "ConflictError",
    "DatasetProblem",
    "DetrforgeError",
    "IntegrityError",
    "LeaseLostError",
    "InvalidDatasetError",
    "InvalidRequestError",
    "InvalidSpecError",
    "MalformedRequestError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ResourceUnavailableError",
    "StorageError",
    "UnauthenticatedError",
    "UnsupportedMediaTypeError",
]


class DetrforgeError(Exception):
    """Base of every error detrforge raises on purpose."""

    code = "INTERNAL_ERROR"

    def __init__(
        self, message: str, *, field: str | None = None, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details or []

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.field, self.details))

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body: ``code``, ``message``, ``field`` (or None) and ``details``."""
        return {
            "code": self.code,
            "message": self.message,
            "field": self.field,
            "details": self.details,
        }


def _rebuild(
    cls: type[DetrforgeError], message: str, field: str | None, details: list[dict[str, Any]]
) -> DetrforgeError:
    return cls(message, field=field, details=details)


class InvalidSpecError(DetrforgeError):
    """A job request is invalid; ``field`` names the offending field."""

    code = "INVALID_SPEC"


class DatasetProblem(dict[str, Any]):
    """One problem in a dataset: ``{"file": ..., "field": ..., "message": ...}``."""


class InvalidDatasetError(DetrforgeError):
    """A dataset failed validation; ``details`` lists every problem with file and field."""

    code = "INVALID_DATASET"


class NotFoundError(DetrforgeError):
    code = "NOT_FOUND"


class ConflictError(DetrforgeError):
    code = "CONFLICT"


class LeaseLostError(ConflictError):
    """Another API replica holds the lease of what this one was about to change."""


class UnauthenticatedError(DetrforgeError):
    code = "UNAUTHENTICATED"


class PermissionDeniedError(DetrforgeError):
    code = "PERMISSION_DENIED"


class StorageError(DetrforgeError):
    """An artifact could not be read or written (bad URI, missing object, no credentials)."""

    code = "STORAGE_ERROR"


class IntegrityError(DetrforgeError):
    """Stored bytes do not match their recorded sha256."""

    code = "INTEGRITY_ERROR"


class ClusterError(DetrforgeError):
    """The Ray cluster could not be reached or refused the request."""

    code = "CLUSTER_ERROR"


class ResourceUnavailableError(DetrforgeError):
    """No node in the cluster offers the resources a job asks for."""

    code = "RESOURCE_UNAVAILABLE"


class InvalidRequestError(DetrforgeError):
    """A request is well-formed JSON but not acceptable (too deep, wrong type, ...)."""

    code = "INVALID_REQUEST"


class MalformedRequestError(DetrforgeError):
    """A request body could not be parsed at all (broken JSON, bad Content-Length)."""

    code = "MALFORMED_REQUEST"


class PayloadTooLargeError(DetrforgeError):
    """A request body is larger than the server accepts (``max_request_bytes``)."""

    code = "PAYLOAD_TOO_LARGE"


class UnsupportedMediaTypeError(DetrforgeError):
    """A request body is not JSON."""

    code = "UNSUPPORTED_MEDIA_TYPE"


class MethodNotAllowedError(DetrforgeError):
    """The path exists but not with this HTTP method."""

    code = "METHOD_NOT_ALLOWED"
