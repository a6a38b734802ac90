"""The one place where detrforge errors become HTTP responses.

Every error body, whoever raises it (a service, request validation, the router's 404/405, the
request limits), has the same shape: ``{"code", "message", "field", "details"}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from detrforge.platform.errors import (
    DetrforgeError,
    InvalidRequestError,
    MalformedRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)

__all__ = [
    "ERROR_CODE_TO_HTTP_STATUS",
    "ERROR_RESPONSES",
    "REQUEST_ERROR_RESPONSES",
    "ErrorBody",
    "error_response",
    "install_error_handlers",
]

ERROR_CODE_TO_HTTP_STATUS: dict[str, int] = {
    "INVALID_SPEC": 422,
    "INVALID_DATASET": 422,
    "INVALID_REQUEST": 422,
    "RESOURCE_UNAVAILABLE": 422,
    "STORAGE_ERROR": 422,
    "MALFORMED_REQUEST": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "CONFLICT": 409,
    "INTEGRITY_ERROR": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "CLUSTER_ERROR": 503,
    "INTERNAL_ERROR": 500,
}

# Starlette and FastAPI raise HTTPException themselves (unknown route, wrong method, a body that
# does not parse); each becomes the error of our hierarchy for that status.
_HTTP_STATUS_TO_ERROR: dict[int, type[DetrforgeError]] = {
    400: MalformedRequestError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: InvalidRequestError,
}


class ErrorBody(BaseModel):
    """Every error response's body."""

    code: str
    message: str
    field: str | None
    details: list[dict[str, Any]]


def _declared(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# What any API route may answer besides its success: declared once, on every router.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _declared("Malformed request: the body is not valid JSON."),
    401: _declared("Missing, invalid or revoked API key."),
    403: _declared("The key's role does not allow this action."),
    404: _declared("No such resource."),
    409: _declared("Conflict with the current state."),
    413: _declared("The request body is larger than the server accepts."),
    415: _declared("The request body is not application/json."),
    422: _declared("Invalid request: `field` names the offending field."),
    503: _declared("The Ray cluster could not be reached."),
}


# What the request limits (api/limits.py) answer on any route, the open ones included.
REQUEST_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: ERROR_RESPONSES[status] for status in (400, 413, 415, 422)
}


def error_response(exc: DetrforgeError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The HTTP response for ``exc``: its status from the table, the error body."""
    status = ERROR_CODE_TO_HTTP_STATUS.get(exc.code, 500)
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse(exc.to_dict(), status_code=status, headers=headers)


async def _detrforge_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DetrforgeError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    cls = _HTTP_STATUS_TO_ERROR.get(exc.status_code)
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no route {request.method} {request.url.path}; the API is described at /docs"
    elif exc.status_code == 405:
        allowed = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
    elif exc.status_code == 400:
        message = f"the request body is not valid JSON ({exc.detail}); send a JSON document"
    else:
        message = str(exc.detail)
    if cls is None:
        body: dict[str, Any] = {
            "code": "HTTP_ERROR",
            "message": message,
            "field": None,
            "details": [],
        }
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
    return error_response(cls(message), headers=dict(exc.headers or {}))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if errors and errors[0].get("type") == "json_invalid":
        reason = (errors[0].get("ctx") or {}).get("error", "JSON decode error")
        position = errors[0].get("loc", ("body", "?"))[-1]
        return error_response(
            MalformedRequestError(
                f"the request body is not valid JSON ({reason} at position {position}); send "
                "a JSON document"
            )
        )
    details = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        details.append({"field": ".".join(loc) or None, "message": _message(err)})
    field = details[0]["field"] if details else None
    message = str(details[0]["message"]) if details else "invalid request"
    if field:
        message = f"{field}: {message}"
    return error_response(InvalidRequestError(message, field=field, details=details))


def _message(err: Any) -> str:
    """Pydantic's message, without the ``Value error, `` prefix of our own validators."""
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, ValueError):
        return str(ctx_err)
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DetrforgeError, _detrforge_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
