"""The one place that maps failures to HTTP status codes and typed JSON bodies
(:data:`ERROR_CODES`).

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

from service.api.schemas import ErrorResponse
from service.imageio import ImageDecodeError, ImageTooLarge, ImageTooSmall, UnsupportedImageType

log = logging.getLogger(__name__)


# Every error code the API answers, with its HTTP status and what it means: the one table.
# ApiError, the exception handlers, the body-limit middleware and the OpenAPI "responses" of
# every route read it; nothing else names a status code of an error.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "bad_request": (400, "the request is malformed"),
    "missing_image": (400, "a multipart body without an 'image' file field"),
    "undecodable_image": (400, "the image could not be decoded"),
    "image_too_small": (400, "the image is smaller than the minimum side"),
    "image_error": (400, "the image could not be used"),
    "unauthorized": (401, "authentication required"),
    "missing_api_key": (401, "no API key was sent"),
    "forbidden": (403, "not allowed"),
    "invalid_api_key": (403, "the API key is not valid"),
    "not_found": (404, "no such resource"),
    "query_not_found": (404, "the query is not retained (or was made with another key)"),
    "method_not_allowed": (405, "the route does not take this method"),
    "request_timeout": (408, "the request body did not arrive in time"),
    "feedback_conflict": (409, "this kind of feedback was already given, naming another SKU"),
    "payload_too_large": (413, "the body is over the size limit"),
    "image_too_large": (413, "the image is over the byte or pixel limit"),
    "unsupported_media_type": (415, "not multipart/form-data or image/*"),
    "unsupported_image_type": (415, "not an image, or a format that is not supported"),
    "invalid_options": (422, "an option is out of range or malformed"),
    "unknown_category": (422, "the category hint names no category"),
    "invalid_filter": (422, "the label filter does not parse (with the position of the error)"),
    "invalid_feedback": (422, "the feedback contradicts the answer it refers to"),
    "unknown_sku": (422, "the SKU is not in the served index version"),
    "rate_limited": (429, "this API key's rate is exceeded; see Retry-After"),
    "overloaded": (429, "the work queue is full; retry shortly"),
    "client_closed_request": (499, "the client closed the connection (never read)"),
    "internal_error": (500, "an unexpected error; it was logged"),
    "unavailable": (503, "models or Redis not available; see Retry-After"),
    "index_unavailable": (503, "no index version can be served; see Retry-After"),
}
# the code of a bare status (Starlette's own 404/405, ...): its first entry in the table
GENERIC_CODE: dict[int, str] = {}
for _code, (_status, _) in ERROR_CODES.items():
    GENERIC_CODE.setdefault(_status, _code)


def status_of(code: str) -> int:
    """The HTTP status of an error code of :data:`ERROR_CODES`."""
    return ERROR_CODES[code][0]


def error_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route answering ``codes``: one entry per status, its
    description listing the codes."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(status_of(code), []).append(code)
    return {status: {"model": ErrorResponse, "description": "; ".join(
        f"{c}: {ERROR_CODES[c][1]}" for c in names)} for status, names in sorted(by_status.items())}


class ApiError(Exception):
    """An error with its machine-readable code (whose status :data:`ERROR_CODES` gives) and
    optional headers."""

    def __init__(
        self, code: str, message: str, headers: dict[str, str] | None = None, **detail: Any,
    ) -> None:
        super().__init__(message)
        self.status = status_of(code)
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.detail = detail  # more fields of the error body (schemas.ErrorDetail)


class Unavailable(ApiError):
    """503: models, index or Redis not available; clients should retry later."""

    code_name = "unavailable"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(self.code_name, message, {"Retry-After": str(retry_after_s)})


class IndexUnavailable(Unavailable):
    """503: no index version can be served (none published, or the served one's data is gone);
    never a silent ``no_match``."""

    code_name = "index_unavailable"


class Overloaded(ApiError):
    """429: the bounded work queue is full."""

    def __init__(self, message: str = "too many requests in flight; retry shortly") -> None:
        super().__init__("overloaded", message, {"Retry-After": "1"})


IMAGE_ERRORS = (ImageDecodeError, ImageTooSmall, ImageTooLarge, UnsupportedImageType)


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

    for exc_type in IMAGE_ERRORS:

        async def _image_error(request: Request, exc: Exception) -> JSONResponse:
            code = getattr(exc, "code", "image_error")
            return error_response(request, status_of(code), code, str(exc), None)

        app.add_exception_handler(exc_type, _image_error)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{loc}: {err.get('msg')}")
        return error_response(request, status_of("invalid_options"), "invalid_options",
                              "; ".join(parts), None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = GENERIC_CODE.get(exc.status_code, "bad_request")
        headers = dict(exc.headers) if exc.headers else None
        return error_response(request, exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # not a server error: counted as 499 in /metrics, and no traceback in the log
        log.info("client closed the request %s on %s %s",
                 getattr(request.state, "request_id", None), request.method, request.url.path)
        return error_response(request, status_of("client_closed_request"),
                              "client_closed_request", "the client closed the connection", None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, status_of("internal_error"), "internal_error",
                              "internal error; it was logged", None)
