"""Routes: short, typed, and the only place that maps failures to status codes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile

from service.api.auth import take_token
from service.api.errors import (
    ApiError,
    IndexUnavailable,
    Overloaded,
    Unavailable,
    error_responses,
    status_of,
)
from service.api.responses import build_response
from service.api.retention import owner_of, retain
from service.api.schemas import (
    HealthResponse,
    ReadyResponse,
    RecognizeResponse,
)
from service.api.state import REDIS_DOWN, ServiceState
from service.imageio import ImageError, decode_photo, decoded_scale, full_size
from service.label_filter import FilterError, parse_filter
from service.preprocess import scale_box
from service.recognition import RecognizeOptions, UnknownCategory
from service.recognizer import clip_roi
from service.redis_server import is_redis_error
from service.store import VersionGone

log = logging.getLogger(__name__)
router = APIRouter()


def get_state(request: Request) -> ServiceState:
    state = getattr(request.app.state, "service", None)
    if state is None:  # the lifespan has not run (or failed before creating the state)
        raise Unavailable("the service is starting")
    return state  # type: ignore[no-any-return]


State = Annotated[ServiceState, Depends(get_state)]


def require_api_key(request: Request, state: State) -> None:
    """401 without a key, 403 with a wrong one, 429 when the key's own rate is exceeded."""
    keys = state.api_keys
    if keys is None:
        raise Unavailable("the service is starting")
    if not keys.enabled:
        return
    header = state.settings.api_key_header
    given = request.headers.get(header)
    if not given:
        raise ApiError("missing_api_key", f"send your API key in the {header} header",
                       {"WWW-Authenticate": "ApiKey"})
    policy = keys.check(given)
    if policy is None:
        raise ApiError("invalid_api_key", "the API key is not valid")
    if state.redis_client is None:
        return
    try:
        wait = take_token(state.redis_client, state.store.keys, policy)  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - Redis down: the request fails later with 503
        log.warning("rate limit of key %s not checked: %s", policy.key_id, exc)
        return
    if wait is not None:
        raise ApiError("rate_limited", "this API key's request rate is exceeded",
                       {"Retry-After": str(max(1, math.ceil(wait)))})


@contextlib.asynccontextmanager
async def admitted(state: ServiceState) -> AsyncIterator[None]:
    """Bounded work queue: at most max_concurrency running + max_queue waiting."""
    s = state.settings
    if state.inflight >= s.max_concurrency + s.max_queue:
        raise Overloaded()
    state.inflight += 1
    state.metrics.queue_depth.set(state.inflight)
    try:
        yield
    finally:
        state.inflight -= 1
        state.metrics.queue_depth.set(state.inflight)


ROI_MAX_CHARS = 256


def parse_roi(value: str | None) -> tuple[float, float, float, float] | None:
    """``x0,y0,x1,y1`` (or the flat JSON list ``[x0,y0,x1,y1]``) in pixels; anything else is
    422.  Parsed by splitting, never by a recursive parser: a hostile value is just text."""
    text = (value or "").strip()
    if not text:
        return None
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    parts = text.split(",") if len(text) <= ROI_MAX_CHARS else []
    try:
        if len(parts) != 4:
            raise ValueError
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError:
        raise ApiError("invalid_options", "roi must be 'x0,y0,x1,y1' in pixels") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ApiError("invalid_options", "roi values must be finite numbers")
    if not (x1 > x0 and y1 > y0) or min(x0, y0) < 0:
        raise ApiError("invalid_options", "roi needs 0 <= x0 < x1 and 0 <= y0 < y1")
    return (x0, y0, x1, y1)


async def read_upload(request: Request) -> tuple[bytes, dict[str, str]]:
    """The image from a multipart field ``image`` or a raw ``image/*`` body, plus any option
    fields sent in the form."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        limit = get_state(request).settings.limits.max_bytes
        form = await request.form(max_files=1, max_fields=16, max_part_size=limit)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ApiError("missing_image", "multipart body needs a file field 'image'")
        data = await upload.read()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        await form.close()
        return data, fields
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return await request.body(), {}
    raise ApiError("unsupported_media_type",
                   "send the photo as multipart/form-data (field 'image') or as an image/* body")


ERRORS = error_responses(
    "undecodable_image", "missing_image", "image_too_small", "missing_api_key", "invalid_api_key",
    "request_timeout", "payload_too_large", "image_too_large", "unsupported_media_type",
    "unsupported_image_type", "invalid_options", "unknown_category", "invalid_filter",
    "rate_limited", "overloaded", "unavailable", "index_unavailable",
)
_CANDIDATE_EXAMPLE = {
    "sku_id": "FLORA-400", "score": 0.87, "source": "both", "title": "Flora Original 400 ml",
    "tags": ["brand=Flora", "size=400ml", "vegan"],
    "labels": ["brand=Flora", "size=400ml", "tag=vegan"], "category": "Spreads",
    "image": "gs://catalog/flora-400-front.jpg", "thumbnail_url": "/skus/FLORA-400/thumbnail",
    "matched_image": {"row": 412, "image": "gs://catalog/flora-400-side.jpg",
                      "similarity": 0.83},
}
_CATEGORY_EXAMPLE = {"name": "Spreads", "model": 0.71, "search": 0.9, "fused": 0.84,
                     "top": [{"name": "Spreads", "model": 0.71, "search": 0.9, "fused": 0.84}],
                     "constrained_to": ["Spreads"]}
_BOX_EXAMPLE = {"pixels": [112.0, 40.0, 260.0, 301.0], "normalized": [0.175, 0.083, 0.406, 0.627],
                "source": "localizer", "score": 0.91}
RESPONSE_EXAMPLE = {
    "request_id": "7f9c2a6e1b3d4c5f", "status": "recognized", "sku": _CANDIDATE_EXAMPLE,
    "candidates": [_CANDIDATE_EXAMPLE], "category": _CATEGORY_EXAMPLE, "box": _BOX_EXAMPLE,
    "objects": [
        {"box": _BOX_EXAMPLE, "score": 0.91, "category": _CATEGORY_EXAMPLE,
         "sku": _CANDIDATE_EXAMPLE, "candidates": [_CANDIDATE_EXAMPLE],
         "fewer_than_top_k": True},
        {"box": {"pixels": [300.0, 60.0, 420.0, 290.0], "normalized": [0.469, 0.125, 0.656, 0.604],
                 "source": "localizer", "score": 0.64},
         "score": 0.64, "category": None, "sku": None, "candidates": [],
         "fewer_than_top_k": True},
    ],
    "fewer_than_top_k": True,
    "filter": {"expression": "brand=Flora AND size=400ml", "skus_passing": 3, "search_k": 640},
    "image_size": {"width": 640, "height": 480}, "model_version": "sicot-lite0-3f2a",
    "localizer_version": "localizer-9b1c", "index_version": "20240601T020000Z-1a2b3c4d",
    "index_built_at": "2024-06-01T02:00:00Z",
    "timings_ms": {"decode": 1.2, "localize": 3.3, "recognize": 6.0, "search": 0.2, "fuse": 0.6,
                   "metadata": 0.8, "total": 12.1},
    "retained": False,
}
ERRORS[200] = {"content": {"application/json": {"example": RESPONSE_EXAMPLE}}}
ERRORS[status_of("invalid_filter")]["content"] = {"application/json": {"example": {"error": {
    "code": "invalid_filter", "request_id": "7f9c2a6e1b3d4c5f", "position": 16,
    "message": "filter: expected key=value or '(', got 'AND' at position 16"}}}}
BODY_DOC = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}}}


@router.post("/recognize", response_model=RecognizeResponse, responses=ERRORS,
             openapi_extra=BODY_DOC, dependencies=[Depends(require_api_key)])
async def recognize(
    request: Request,
    state: State,
    # ranges are checked in _options for query and form alike; create_app writes them into
    # the OpenAPI schema from the same settings
    top_k: Annotated[int | None, Query(description="candidates to return")] = None,
    category: Annotated[str | None, Query(max_length=200, description="restrict to it")] = None,
    roi: Annotated[str | None, Query(description="known product box 'x0,y0,x1,y1' px")] = None,
    min_score: Annotated[float | None, Query(description="no_match below it")] = None,
    max_objects: Annotated[int | None, Query(
        description="recognise up to this many detected products (main one first)")] = None,
    filter_: Annotated[str | None, Query(
        alias="filter", description="label filter: key=value terms joined by AND / OR, "
        "parentheses allowed", examples=["brand=Flora AND (size=400ml OR size=250ml)"])] = None,
) -> RecognizeResponse:
    """Recognise the products in a photo: for the main one (and, with ``max_objects`` > 1,
    every other detected product, main first in ``objects``) the best SKU with its catalog
    metadata, the top-k candidates with their nearest catalog image, the predicted category,
    the box used, and the time of each stage (all objects are recognised in one batch).
    When no candidate reaches ``min_score`` the status is ``no_match`` (not an error).

    ``filter`` keeps only SKUs whose labels match (Google Product Search's grammar,
    ``brand=Flora AND (size=400ml OR size=250ml)``; a catalog tag without ``=`` is the label
    ``tag=<value>``); a filter outside the grammar is 422 ``invalid_filter`` with the
    ``position`` of the problem.  ``fewer_than_top_k`` says when fewer candidates passed.

    To refine one object, send its ``objects[i].box.pixels`` back as ``roi`` (with the same
    photo): that exact crop is recognised again, with any other ``top_k``, ``category`` or
    ``filter``.  Options come as query parameters or as form fields next to ``image``."""
    s = state.settings
    ready_snapshot(state)  # fail fast, before reading a body that cannot be answered
    # the body is read before taking a compute slot: a slow upload holds only its connection
    # (and has a deadline, see middleware), never a place in the work queue
    data, fields = await read_upload(request)
    opts = _options(
        s,
        top_k if top_k is not None else _num(fields, "top_k", int),
        category if category is not None else fields.get("category"),
        parse_roi(roi if roi is not None else fields.get("roi")),
        min_score if min_score is not None else _num(fields, "min_score", float),
        max_objects if max_objects is not None else _num(fields, "max_objects", int),
        filter_ if filter_ is not None else fields.get("filter"),
    )
    async with admitted(state):
        snap = ready_snapshot(state)
        loop = asyncio.get_running_loop()
        with redis_errors(request, state):
            try:
                return await loop.run_in_executor(
                    state.executor, _run, state, request.state.request_id, data, opts, snap,
                    owner_of(request, state))
            except UnknownCategory as exc:
                raise ApiError("unknown_category", str(exc)) from None
            except ImageError:
                raise
            except ValueError as exc:
                raise ApiError("invalid_options", str(exc)) from None


def ready_snapshot(state: ServiceState) -> Any:
    """The index snapshot to answer from, or 503 saying what is missing."""
    retry = state.settings.retry_after_s
    if state.recognizer is None or state.store is None:
        raise Unavailable("the service is not ready (models or Redis not loaded)", retry)
    snap = state.snapshot
    if snap is None:
        reason = state.follower.last_error if state.follower is not None else None
        raise IndexUnavailable(f"no index version can be served: {reason or 'none loaded'}",
                               retry)
    return snap


@contextlib.contextmanager
def redis_errors(request: Request, state: ServiceState) -> Iterator[None]:
    """Redis failures → 503 that says what is unavailable; where it is goes to the log."""
    retry = state.settings.retry_after_s
    try:
        yield
    except VersionGone as exc:
        log.warning("request %s: %s", request.state.request_id, exc)
        raise IndexUnavailable(f"{exc}; waiting for the next published version", retry) from None
    except Exception as exc:
        if not is_redis_error(exc):
            raise
        log.warning("request %s: redis error: %s", request.state.request_id, exc)
        raise Unavailable(REDIS_DOWN, retry) from None


def _num(fields: dict[str, str], name: str, cast: Any) -> Any:
    if name not in fields:
        return None
    try:
        return cast(fields[name])
    except ValueError:
        raise ApiError("invalid_options", f"{name} must be a number") from None


def _options(s: Any, top_k: int | None, category: str | None, roi: Any,
             min_score: float | None, max_objects: int | None = None,
             filter_text: str | None = None) -> RecognizeOptions:
    """The one validation of the options, whichever way they came."""
    top_k = s.default_top_k if top_k is None else top_k
    if not 1 <= top_k <= s.max_top_k:
        raise ApiError("invalid_options", f"top_k must be in [1, {s.max_top_k}]")
    min_score = s.default_min_score if min_score is None else min_score
    if not 0.0 <= min_score <= 1.0:
        raise ApiError("invalid_options", "min_score must be in [0, 1]")
    max_objects = 1 if max_objects is None else max_objects
    if not 1 <= max_objects <= s.max_objects:
        raise ApiError("invalid_options", f"max_objects must be in [1, {s.max_objects}]")
    try:
        node = parse_filter(filter_text) if filter_text else None
    except FilterError as exc:
        raise ApiError("invalid_filter", str(exc), position=exc.position) from None
    return RecognizeOptions(top_k=top_k, category=category or None, roi=roi, min_score=min_score,
                            max_objects=max_objects, filter=node,
                            filter_text=filter_text if node is not None else None)


def _run(state: ServiceState, request_id: str, data: bytes, opts: RecognizeOptions,
         snap: Any, owner: str = "") -> RecognizeResponse:
    t0 = time.perf_counter()
    img = decode_photo(data, state.recognizer.sicot.preprocess.input_size,  # type: ignore[union-attr]
                       state.settings.limits)
    decode_ms = (time.perf_counter() - t0) * 1000.0
    # a large photo is decoded reduced; the client's roi and the answer's box and size are in
    # the pixels of the photo it sent
    fw, fh = full_size(img)
    scale = decoded_scale(img)
    if opts.roi is not None:  # checked against the photo as sent, then scaled
        opts = dataclasses.replace(opts, roi=scale_box(clip_roi(opts.roi, (fw, fh)), scale))
    r = state.recognizer.recognize(img, snap, state.store, opts)  # type: ignore[union-attr, arg-type]
    state.metrics.observe_stages({"decode": decode_ms, **r.timings_ms})
    state.metrics.recognitions.labels("recognized" if r.best else "no_match").inc()
    response = build_response(state, request_id, r, snap, decode_ms, scale, top_k=opts.top_k,
                              filter_text=opts.filter_text)
    response.retained = retain(state, request_id, owner, img, r, response)
    return response




@router.get("/skus/{sku_id}/thumbnail", responses=error_responses(
    "missing_api_key", "invalid_api_key", "not_found", "unavailable", "index_unavailable"),
            dependencies=[Depends(require_api_key)])
async def thumbnail(sku_id: Annotated[str, Path(max_length=200)], request: Request,
                    state: State) -> Response:
    """The SKU's small catalog JPEG, when the index holds one."""
    snap = ready_snapshot(state)
    with redis_errors(request, state):
        (meta,) = await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(state.store.get_skus, snap.version, [sku_id],  # type: ignore[union-attr]
                                    published=True))
    if not meta or not meta.get("thumb"):
        raise ApiError("not_found", f"no thumbnail for SKU {sku_id!r}")
    return Response(meta["thumb"], media_type="image/jpeg",
                    headers={"Cache-Control": "public, max-age=3600"})


@router.api_route("/healthz", methods=["GET", "HEAD"], response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """Liveness: the process answers."""
    return HealthResponse(status="ok")


@router.api_route("/readyz", methods=["GET", "HEAD"], response_model=ReadyResponse,
                  responses={503: {"model": ReadyResponse}})
async def readyz(state: State) -> JSONResponse:
    """Readiness: models loaded, an index version loaded, Redis answering."""
    checks, detail = await asyncio.get_running_loop().run_in_executor(None, state.readiness)
    r, snap = state.recognizer, state.snapshot
    body = ReadyResponse(
        ready=all(checks.values()), checks=checks, detail=detail,
        model_version=r.sicot.config.model_version if r else None,
        localizer_version=r.localizer.config.model_version if r and r.localizer else None,
        index_version=snap.version if snap else None,
        published_index_version=state.follower.published if state.follower else None,
    )
    headers = None if body.ready else {"Retry-After": str(state.settings.retry_after_s)}
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503, headers=headers)


def require_key_for_metrics(request: Request, state: State) -> None:
    if state.settings.metrics_require_key:
        require_api_key(request, state)


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(require_key_for_metrics)])
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
