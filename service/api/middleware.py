"""ASGI middleware: request ids + metrics, and the body limits enforced while reading.

The size limit is checked on ``Content-Length`` before a byte of the body is read, and counted
chunk by chunk for chunked uploads, so an oversized upload is refused without buffering it.
The body also has a deadline (a total time, and a minimum rate after a grace time): a client
that trickles its body, or announces more bytes than it sends, gets 408 and its connection is
closed instead of holding it for ever.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import status_of
from service.api.metrics import Metrics
from service.api.settings import ClientTimeouts

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small option fields


class _BodyRefused(Exception):
    """The body broke a limit while being read; answered here, since the app cannot."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status_of(code), code, message


async def _send_json(send: Send, status: int, body: dict[str, Any], *, close: bool = False) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(payload)).encode())]  # the wrapper adds the id
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class RequestContextMiddleware:
    """Request id (from ``X-Request-ID`` or new), per-route counters and latency, size limit."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int, limited: set[str],
                 timeouts: ClientTimeouts | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body + MULTIPART_OVERHEAD
        self.limited = limited
        self.timeouts = timeouts or ClientTimeouts()

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
                refused = self._too_large(int(length))
                await self._refuse(send_wrapper, rid, refused)
                self._record(route, refused.status, start)
                return
            receive_fn = self._guarded(receive)
        try:
            await self.app(scope, receive_fn, send_wrapper)
        except _BodyRefused as exc:
            if not status_holder["started"]:
                await self._refuse(send_wrapper, rid, exc)
        finally:
            self._record(route, int(status_holder["status"]), start)

    def _guarded(self, receive: Receive) -> Receive:
        """``receive`` with the size limit and the body deadline; once the body is complete
        it is passed through untouched (later calls only wait for a disconnect)."""
        seen = 0
        complete = False
        started = time.monotonic()
        t = self.timeouts

        async def wrapped() -> Message:
            nonlocal seen, complete
            if complete:
                return await receive()
            # time allowed so far: the grace time plus what the bytes received have earned
            allowed = min(t.body_total_s, t.body_grace_s + seen / t.body_min_rate_bps)
            remaining = started + allowed - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), remaining)
            except TimeoutError:
                raise _BodyRefused(
                    "request_timeout",
                    f"the request body did not arrive in time (at most {t.body_total_s:g} s, and "
                    f"at least {t.body_min_rate_bps} bytes/s after {t.body_grace_s:g} s)",
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise self._too_large(None)
                complete = not message.get("more_body", False)
            return message

        return wrapped

    def _too_large(self, length: int | None) -> _BodyRefused:
        size = f"{length} bytes" if length is not None else "more bytes than allowed"
        limit = self.max_body - MULTIPART_OVERHEAD
        return _BodyRefused("payload_too_large",
                            f"request body is {size}; the image limit is {limit} bytes")

    @staticmethod
    async def _refuse(send: Send, rid: str, exc: _BodyRefused) -> None:
        # the rest of the body is not read: the connection cannot be reused, so close it
        body = {"error": {"code": exc.code, "message": exc.message, "request_id": rid}}
        await _send_json(send, exc.status, body, close=True)

    def _record(self, route: str, status: int, start: float) -> None:
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - start)
