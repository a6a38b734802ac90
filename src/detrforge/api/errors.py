"""The one place where detrforge errors become HTTP responses."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from detrforge.platform.errors import DetrforgeError

__all__ = ["ERROR_CODE_TO_HTTP_STATUS", "install_error_handlers"]

ERROR_CODE_TO_HTTP_STATUS: dict[str, int] = {
    "INVALID_SPEC": 422,
    "INVALID_DATASET": 422,
    "INVALID_REQUEST": 422,
    "RESOURCE_UNAVAILABLE": 422,
    "STORAGE_ERROR": 422,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "CONFLICT": 409,
    "INTEGRITY_ERROR": 409,
    "CLUSTER_ERROR": 503,
    "INTERNAL_ERROR": 500,
}


async def _detrforge_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DetrforgeError)
    status = ERROR_CODE_TO_HTTP_STATUS.get(exc.code, 500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(exc.to_dict(), status_code=status, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        details.append({"field": ".".join(loc) or None, "message": err.get("msg", "invalid")})
    first = details[0] if details else {"field": None, "message": "invalid request"}
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    body = {
        "code": "INVALID_REQUEST",
        "message": message,
        "field": first["field"],
        "details": details,
    }
    return JSONResponse(body, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DetrforgeError, _detrforge_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
