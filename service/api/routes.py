"""The routes: each parses its request (:mod:`service.api.options`), takes what it needs
(:mod:`service.api.deps`), runs the core and maps the result (:mod:`service.api.responses`);
errors are raised with their code, whose status :data:`service.api.errors.ERROR_CODES` gives."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import (
    Serving,
    State,
    admitted,
    redis_errors,
    require_api_key,
    require_key_for_metrics,
    require_serving,
)
from service.api.errors import ApiError, error_responses, status_of
from service.api.examples import INVALID_FILTER_EXAMPLE, RESPONSE_EXAMPLE
from service.api.options import form_number, parse_roi, read_upload, recognize_options
from service.api.responses import build_response
from service.api.retention import owner_of, retain
from service.api.schemas import HealthResponse, ReadyResponse, RecognizeResponse
from service.api.state import ServiceState
from service.imageio import ImageError, decode_photo, decoded_scale, full_size
from service.preprocess import scale_box
from service.recognition import RecognizeOptions, UnknownCategory
from service.recognizer import clip_roi

log = logging.getLogger(__name__)
router = APIRouter()

ERRORS = error_responses(
    "undecodable_image", "missing_image", "image_too_small", "missing_api_key", "invalid_api_key",
    "request_timeout", "payload_too_large", "image_too_large", "unsupported_media_type",
    "unsupported_image_type", "invalid_options", "unknown_category", "invalid_filter",
    "rate_limited", "overloaded", "unavailable", "index_unavailable",
)
ERRORS[200] = {"content": {"application/json": {"example": RESPONSE_EXAMPLE}}}
ERRORS[status_of("invalid_filter")]["content"] = {
    "application/json": {"example": INVALID_FILTER_EXAMPLE}}
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
    # ranges are checked in recognize_options for query and form alike; create_app writes them into
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
    require_serving(state)  # fail fast, before reading a body that cannot be answered
    # the body is read before taking a compute slot: a slow upload holds only its connection
    # (and has a deadline, see middleware), never a place in the work queue
    data, fields = await read_upload(request, s.limits.max_bytes)
    opts = recognize_options(
        s,
        top_k if top_k is not None else form_number(fields, "top_k", int),
        category if category is not None else fields.get("category"),
        parse_roi(roi if roi is not None else fields.get("roi")),
        min_score if min_score is not None else form_number(fields, "min_score", float),
        max_objects if max_objects is not None else form_number(fields, "max_objects", int),
        filter_ if filter_ is not None else fields.get("filter"),
    )
    async with admitted(state):
        serving = require_serving(state)
        loop = asyncio.get_running_loop()
        with redis_errors(request, state):
            try:
                return await loop.run_in_executor(
                    state.executor, _run, state, serving, request.state.request_id, data, opts,
                    owner_of(request, state))
            except UnknownCategory as exc:
                raise ApiError("unknown_category", str(exc)) from None
            except ImageError:
                raise
            except ValueError as exc:
                raise ApiError("invalid_options", str(exc)) from None


def _run(state: ServiceState, serving: Serving, request_id: str, data: bytes,
         opts: RecognizeOptions, owner: str = "") -> RecognizeResponse:
    t0 = time.perf_counter()
    recognizer, snap = serving.recognizer, serving.snapshot
    img = decode_photo(data, recognizer.sicot.preprocess.input_size, state.settings.limits)
    decode_ms = (time.perf_counter() - t0) * 1000.0
    # a large photo is decoded reduced; the client's roi and the answer's box and size are in
    # the pixels of the photo it sent
    fw, fh = full_size(img)
    scale = decoded_scale(img)
    if opts.roi is not None:  # checked against the photo as sent, then scaled
        opts = dataclasses.replace(opts, roi=scale_box(clip_roi(opts.roi, (fw, fh)), scale))
    r = recognizer.recognize(img, snap, serving.store, opts)
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
    serving = require_serving(state)
    with redis_errors(request, state):
        (meta,) = await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(serving.store.get_skus, serving.snapshot.version, [sku_id],
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


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(require_key_for_metrics)])
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
