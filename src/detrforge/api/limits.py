"""Request limits enforced before any route runs: body size, media type, JSON nesting depth.

Plain ASGI (like ``RequestIdMiddleware``): it reads the body once, up to ``max_bytes``, and
replays it to the app. A declared ``Content-Length`` over the limit is refused without reading;
a chunked body is counted as it streams in and refused as soon as it passes the limit. Datasets
and checkpoints arrive by path or URI, so API bodies are small JSON documents.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from detrforge.api.errors import error_response
from detrforge.platform.errors import (
    DetrforgeError,
    InvalidRequestError,
    MalformedRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from detrforge.platform.limits import MAX_JSON_DEPTH, json_has_non_finite, json_nesting_depth

__all__ = ["RequestLimitsMiddleware", "install_request_limits"]


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class RequestLimitsMiddleware:
    """Refuse bodies over ``max_bytes`` (413), not JSON (415) or nested too deeply (422)."""

    def __init__(self, app: Any, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        problem = self._declared_length_problem(headers.get("content-length"))
        if problem is not None:
            await error_response(problem)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        disconnected = None
        while True:
            message = await receive()
            if message["type"] != "http.request":
                disconnected = message
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await error_response(self._too_large(f"more than {self.max_bytes}"))(
                    scope, receive, send
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = self._body_problem(body, headers.get("content-type", ""))
        if problem is not None:
            await error_response(problem)(scope, receive, send)
            return

        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                if disconnected is not None:
                    return disconnected
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self, size: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"the request body is {size} bytes; the limit is {self.max_bytes} bytes "
            "(DETRFORGE_MAX_REQUEST_BYTES). Datasets and checkpoints go by path or URI, not in "
            "the body"
        )

    def _declared_length_problem(self, declared: str | None) -> DetrforgeError | None:
        if declared is None:
            return None
        if not declared.strip().isdigit():
            return MalformedRequestError(f"Content-Length {declared!r} is not a whole number")
        if int(declared) > self.max_bytes:
            return self._too_large(str(int(declared)))
        return None

    def _body_problem(self, body: bytes, content_type: str) -> DetrforgeError | None:
        if not body:
            return None
        if not _is_json(content_type):
            return UnsupportedMediaTypeError(
                f"the request body has content type {content_type or 'none'!r}; send "
                "application/json"
            )
        if json_has_non_finite(body):
            return MalformedRequestError(
                "the request body uses NaN or Infinity, which are not JSON; send finite numbers"
            )
        if json_nesting_depth(body, stop_at=self.max_depth + 1) > self.max_depth:
            return InvalidRequestError(
                f"the JSON body nests deeper than {self.max_depth} levels; no request needs "
                "that many"
            )
        return None


def install_request_limits(app: FastAPI, *, max_bytes: int) -> None:
    """Add the request limits to ``app`` (``max_bytes`` from ``Settings.max_request_bytes``)."""
    app.add_middleware(RequestLimitsMiddleware, max_bytes=max_bytes)
