"""The one place that maps failures to HTTP status codes and typed JSON bodies.

Every error leaves as ``{"error": {"code", "message", "request_id"}}`` (plus ``position`` for
an invalid filter); an unexpected exception
is logged with its traceback and answered with a generic 500 body, never the traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.imageio import ImageDecodeError, ImageTooLarge, ImageTooSmall, UnsupportedImageType

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with its status code, machine-readable code and optional headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
        **detail: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.detail = detail  # more fields of the error body (schemas.ErrorDetail)


class Unavailable(ApiError):
    """503: models, index or Redis not available; clients should retry later."""

    code_name = "unavailable"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(503, self.code_name, message, {"Retry-After": str(retry_after_s)})


class IndexUnavailable(Unavailable):
    """503: no index version can be served (none published, or the served one's data is gone);
    never a silent ``no_match``."""

    code_name = "index_unavailable"


class Overloaded(ApiError):
    """429: the bounded work queue is full."""

    def __init__(self, message: str = "too many requests in flight; retry shortly") -> None:
        super().__init__(429, "overloaded", message, {"Retry-After": "1"})


IMAGE_ERRORS: dict[type[Exception], int] = {
    ImageDecodeError: 400,
    ImageTooSmall: 400,
    ImageTooLarge: 413,
    UnsupportedImageType: 415,
}

STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
                408: "request_timeout", 422: "invalid_options", 429: "overloaded",
                499: "client_closed_request", 503: "unavailable"}
CLIENT_CLOSED = 499  # nginx's "client closed request": the client left, nobody reads this


def error_response(
    request: Request | None, status: int, code: str, message: str,
    headers: dict[str, str] | None, **detail: Any,
) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    body: dict[str, Any] = {"error": {"code": code, "message": message, "request_id": request_id,
                                      **detail}}
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.headers,
                              **exc.detail)

    for exc_type, status in IMAGE_ERRORS.items():

        async def _image_error(request: Request, exc: Exception, status: int = status) -> JSONResponse:
            code = getattr(exc, "code", "image_error")
            return error_response(request, status, code, str(exc), None)

        app.add_exception_handler(exc_type, _image_error)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{loc}: {err.get('msg')}")
        return error_response(request, 422, "invalid_options", "; ".join(parts), None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        return error_response(request, exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # not a server error: counted as 499 in /metrics, and no traceback in the log
        log.info("client closed the request %s on %s %s",
                 getattr(request.state, "request_id", None), request.method, request.url.path)
        return error_response(request, CLIENT_CLOSED, "client_closed_request",
                              "the client closed the connection", None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal_error", "internal error; it was logged", None)
