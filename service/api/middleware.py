"""ASGI middleware: request ids + metrics, and the body-size limit enforced while reading.

The size limit is checked on ``Content-Length`` before a byte of the body is read, and counted
chunk by chunk for chunked uploads, so an oversized upload is refused without buffering it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.metrics import Metrics

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small option fields


class _TooLarge(Exception):
    pass


async def _send_json(send: Send, status: int, body: dict[str, Any], request_id: str) -> None:
    payload = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"x-request-id", request_id.encode())],
    })
    await send({"type": "http.response.body", "body": payload})


class RequestContextMiddleware:
    """Request id (from ``X-Request-ID`` or new), per-route counters and latency, size limit."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int, limited: set[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body + MULTIPART_OVERHEAD
        self.limited = limited

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        path = scope.get("path", "")
        route = path if path in self.limited or path in ("/healthz", "/readyz", "/metrics") \
            else "other"
        start = time.perf_counter()
        status_holder = {"status": 500, "started": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        receive_fn = receive
        if path in self.limited:
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await self._too_large(send_wrapper, rid, int(length))
                self._record(route, 413, start)
                return
            receive_fn = self._counting(receive)
        try:
            await self.app(scope, receive_fn, send_wrapper)
        except _TooLarge:
            if not status_holder["started"]:
                await self._too_large(send_wrapper, rid, None)
        finally:
            self._record(route, int(status_holder["status"]), start)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge()
            return message

        return wrapped

    async def _too_large(self, send: Send, rid: str, length: int | None) -> None:
        size = f"{length} bytes" if length is not None else "more bytes than allowed"
        limit = self.max_body - MULTIPART_OVERHEAD
        body = {"error": {"code": "payload_too_large",
                          "message": f"request body is {size}; the image limit is {limit} bytes",
                          "request_id": rid}}
        await _send_json(send, 413, body, rid)

    def _record(self, route: str, status: int, start: float) -> None:
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - start)
