"""A typed Python client of ``POST /recognize`` (httpx; installed with the ``serve`` extra).

It returns the service's own pydantic models (:class:`RecognizeResponse`), so a client and the
server can never disagree on a field.  429 and 503 are retried with exponential backoff, never
sooner than the server's ``Retry-After``; every other error is raised at once as
:class:`SkuApiError` carrying the service's ``{"error": {code, message, request_id}}`` body.

    with SkuClient("http://localhost:8000", api_key="...") as client:
        answer = client.recognize("shelf.jpg", top_k=3, max_objects=3, filter="brand=Flora")
        for obj in answer.objects:  # the main product first
            print(obj.box.pixels, obj.sku.sku_id if obj.sku else "no match")
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from service.api.schemas import RecognizeResponse

RETRIED_STATUSES = frozenset({429, 503})
Image = str | Path | bytes


class SkuApiError(Exception):
    """A non-2xx answer (after any retries), with the service's error code and request id."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None,
                 attempts: int = 1) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.request_id, self.attempts = request_id, attempts


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` in all (1 = no retry); waits ``backoff_s * 2**n``, at least Retry-After,
    at most ``max_wait_s`` (a longer Retry-After is not waited for: the error is raised)."""

    attempts: int = 4
    backoff_s: float = 0.5
    max_wait_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_s < 0 or self.max_wait_s < 0:
            raise ValueError("attempts >= 1, backoff_s >= 0 and max_wait_s >= 0 are required")

    def wait_s(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None to give up with this response."""
        if response.status_code not in RETRIED_STATUSES or attempt + 1 >= self.attempts:
            return None
        wait = max(self.backoff_s * 2**attempt, _retry_after(response))
        return wait if wait <= self.max_wait_s else None


def _retry_after(response: httpx.Response) -> float:
    # only the delta-seconds form: the service never sends an HTTP date
    try:
        return max(0.0, float(response.headers.get("Retry-After", "0")))
    except ValueError:
        return 0.0


def _request_parts(image: Image, options: dict[str, Any]) -> dict[str, Any]:
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    params = {k: v for k, v in options.items() if v is not None}
    if isinstance(params.get("roi"), tuple | list):
        params["roi"] = ",".join(f"{v:g}" for v in params["roi"])
    return {"files": {"image": ("image", data, "application/octet-stream")}, "params": params}


def _parse(response: httpx.Response, attempts: int) -> RecognizeResponse:
    if response.is_success:
        return RecognizeResponse.model_validate_json(response.content)
    try:
        error = response.json()["error"]
        code, message, rid = error["code"], error["message"], error.get("request_id")
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:200]
        rid = response.headers.get("X-Request-ID")
    raise SkuApiError(response.status_code, code, message, rid, attempts)


def _options(top_k: int | None, category: str | None, roi: Any, min_score: float | None,
             filter: str | None, max_objects: int | None) -> dict[str, Any]:
    return {"top_k": top_k, "category": category, "roi": roi, "min_score": min_score,
            "filter": filter, "max_objects": max_objects}


class SkuClient:
    """Blocking client; one connection pool, reused across calls (use it as a context manager
    or call :meth:`close`)."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, api_key_header: str = "X-API-Key") -> None:
        headers = {api_key_header: api_key} if api_key else {}
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def recognize(self, image: Image, *, top_k: int | None = None, category: str | None = None,
                  roi: Any = None, min_score: float | None = None, filter: str | None = None,
                  max_objects: int | None = None) -> RecognizeResponse:
        """Recognise the products in ``image`` (a path or the encoded bytes): ``filter`` a
        label filter (``"brand=Flora AND size=400ml"``), ``max_objects`` how many detected
        products to recognise (``answer.objects``, main first); ``roi`` one object's
        ``box.pixels`` to recognise only that crop."""
        parts = _request_parts(image, _options(top_k, category, roi, min_score, filter,
                                               max_objects))
        attempt = 0
        while True:
            response = self._http.post("/recognize", **parts)
            wait = self.retry.wait_s(response, attempt)
            if wait is None:
                return _parse(response, attempt + 1)
            time.sleep(wait)
            attempt += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SkuClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSkuClient:
    """The same client for asyncio code (``await client.recognize(...)``)."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, api_key_header: str = "X-API-Key") -> None:
        headers = {api_key_header: api_key} if api_key else {}
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)

    async def recognize(self, image: Image, *, top_k: int | None = None,
                        category: str | None = None, roi: Any = None,
                        min_score: float | None = None, filter: str | None = None,
                        max_objects: int | None = None) -> RecognizeResponse:
        """Recognise the products in ``image``; the options of :meth:`SkuClient.recognize`."""
        parts = _request_parts(image, _options(top_k, category, roi, min_score, filter,
                                               max_objects))
        attempt = 0
        while True:
            response = await self._http.post("/recognize", **parts)
            wait = self.retry.wait_s(response, attempt)
            if wait is None:
                return _parse(response, attempt + 1)
            await asyncio.sleep(wait)
            attempt += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncSkuClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
