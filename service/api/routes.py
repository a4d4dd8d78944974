"""Routes: short, typed, and the only place that maps failures to status codes."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile

from service.api.errors import ApiError, Overloaded, Unavailable
from service.api.retention import owner_of, retain
from service.api.schemas import (
    BoxUsed,
    Candidate,
    CategoryPrediction,
    CategoryScore,
    ErrorResponse,
    HealthResponse,
    ImageSize,
    ReadyResponse,
    RecognizeResponse,
)
from service.api.state import ServiceState
from service.imageio import ImageError, decode_image
from service.recognizer import Recognition, RecognizeOptions, UnknownCategory

log = logging.getLogger(__name__)
router = APIRouter()


def get_state(request: Request) -> ServiceState:
    state = getattr(request.app.state, "service", None)
    if state is None:  # the lifespan has not run (or failed before creating the state)
        raise Unavailable("the service is starting")
    return state  # type: ignore[no-any-return]


State = Annotated[ServiceState, Depends(get_state)]


def require_api_key(request: Request, state: State) -> None:
    keys = state.settings.api_keys
    if not keys:
        return
    given = request.headers.get(state.settings.api_key_header)
    if not given:
        raise ApiError(401, "missing_api_key",
                       f"send your API key in the {state.settings.api_key_header} header",
                       {"WWW-Authenticate": "ApiKey"})
    if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
        raise ApiError(403, "invalid_api_key", "the API key is not valid")


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


def parse_roi(value: str | None) -> tuple[float, float, float, float] | None:
    if value is None or value == "":
        return None
    try:
        nums = json.loads(value) if value.strip().startswith("[") else value.split(",")
        x0, y0, x1, y1 = (float(v) for v in nums)
    except (ValueError, TypeError):
        raise ApiError(422, "invalid_options", "roi must be 'x0,y0,x1,y1' in pixels") from None
    if not (x1 > x0 and y1 > y0) or min(x0, y0) < 0:
        raise ApiError(422, "invalid_options", "roi needs 0 <= x0 < x1 and 0 <= y0 < y1")
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
            raise ApiError(400, "missing_image", "multipart body needs a file field 'image'")
        data = await upload.read()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        await form.close()
        return data, fields
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return await request.body(), {}
    raise ApiError(415, "unsupported_media_type",
                   "send the photo as multipart/form-data (field 'image') or as an image/* body")


def _candidate(c: Any) -> Candidate:
    meta = c.metadata
    return Candidate(
        sku_id=c.sku_id, score=round(c.score, 6), source=c.source,
        title=meta.get("title", ""), tags=list(meta.get("tags") or []),
        category=meta.get("category", ""), image=meta.get("image", ""),
        thumbnail_url=f"/skus/{c.sku_id}/thumbnail" if meta.get("thumb") else None,
    )


def _category(r: Recognition) -> CategoryPrediction | None:
    if not r.category_names:
        return None
    order = sorted(range(len(r.category_names)), key=lambda i: -r.category_fused[i])
    top = [CategoryScore(name=r.category_names[i], model=round(float(r.category_model[i]), 6),
                         search=round(float(r.category_vote[i]), 6),
                         fused=round(float(r.category_fused[i]), 6)) for i in order[:5]]
    return CategoryPrediction(**top[0].model_dump(), top=top, constrained_to=r.constrained_to)


def build_response(state: ServiceState, request_id: str, r: Recognition,
                   snap: Any, decode_ms: float) -> RecognizeResponse:
    w, h = r.image_size
    x0, y0, x1, y1 = r.box
    rec = state.recognizer
    timings = {"decode": round(decode_ms, 3), **{k: round(v, 3) for k, v in r.timings_ms.items()}}
    timings["total"] = round(timings["total"] + decode_ms, 3)
    candidates = [_candidate(c) for c in r.candidates]
    return RecognizeResponse(
        request_id=request_id,
        status="recognized" if r.best is not None else "no_match",
        sku=_candidate(r.best) if r.best is not None else None,
        candidates=candidates, category=_category(r),
        box=BoxUsed(pixels=(x0, y0, x1, y1), normalized=(x0 / w, y0 / h, x1 / w, y1 / h),
                    source=r.box_source, score=r.box_score),  # type: ignore[arg-type]
        image_size=ImageSize(width=w, height=h),
        model_version=rec.sicot.config.model_version if rec else "",
        localizer_version=rec.localizer.config.model_version if rec and rec.localizer else None,
        index_version=snap.version, index_built_at=snap.built_at, timings_ms=timings,
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc} for code, desc in {
        400: "undecodable image, or no 'image' field", 401: "missing API key",
        403: "wrong API key", 413: "body or pixel count over the limits",
        415: "not an image, or an unsupported format", 422: "invalid options",
        429: "the work queue is full; retry shortly",
        503: "models, index or Redis unavailable; see Retry-After",
    }.items()
}
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
    top_k: Annotated[int | None, Query(ge=1, le=200, description="candidates to return")] = None,
    category: Annotated[str | None, Query(max_length=200, description="restrict to it")] = None,
    roi: Annotated[str | None, Query(description="known product box 'x0,y0,x1,y1' px")] = None,
    min_score: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
) -> RecognizeResponse:
    """Recognise the product in a photo: the best SKU with its catalog metadata, the top-k
    candidates, the predicted category, the box used and the time of each stage.
    When no candidate reaches ``min_score`` the status is ``no_match`` (not an error)."""
    s = state.settings
    snap = state.snapshot
    if state.recognizer is None or snap is None or state.store is None:
        raise Unavailable("the service is not ready (models or index not loaded)", s.retry_after_s)
    async with admitted(state):
        data, fields = await read_upload(request)
        opts = _options(s, top_k or _num(fields, "top_k", int), category or fields.get("category"),
                        parse_roi(roi or fields.get("roi")),
                        min_score if min_score is not None else _num(fields, "min_score", float))
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                state.executor, _run, state, request.state.request_id, data, opts, snap,
                owner_of(request, state))
        except ImageError:
            raise
        except UnknownCategory as exc:
            raise ApiError(422, "unknown_category", str(exc)) from None
        except ValueError as exc:
            raise ApiError(422, "invalid_options", str(exc)) from None
        except Exception as exc:
            if _is_redis_error(exc):
                raise Unavailable(f"Redis unavailable: {exc}", s.retry_after_s) from None
            raise


def _num(fields: dict[str, str], name: str, cast: Any) -> Any:
    if name not in fields:
        return None
    try:
        return cast(fields[name])
    except ValueError:
        raise ApiError(422, "invalid_options", f"{name} must be a number") from None


def _options(s: Any, top_k: int | None, category: str | None, roi: Any,
             min_score: float | None) -> RecognizeOptions:
    top_k = top_k or s.default_top_k
    if not 1 <= top_k <= s.max_top_k:
        raise ApiError(422, "invalid_options", f"top_k must be in [1, {s.max_top_k}]")
    min_score = s.default_min_score if min_score is None else min_score
    if not 0.0 <= min_score <= 1.0:
        raise ApiError(422, "invalid_options", "min_score must be in [0, 1]")
    return RecognizeOptions(top_k=top_k, category=category or None, roi=roi, min_score=min_score)


def _run(state: ServiceState, request_id: str, data: bytes, opts: RecognizeOptions,
         snap: Any, owner: str = "") -> RecognizeResponse:
    t0 = time.perf_counter()
    draft = max(state.recognizer.sicot.preprocess.input_size * 4, 512)  # type: ignore[union-attr]
    img = decode_image(data, state.settings.limits, draft_size=draft)
    decode_ms = (time.perf_counter() - t0) * 1000.0
    r = state.recognizer.recognize(img, snap, state.store, opts)  # type: ignore[union-attr, arg-type]
    state.metrics.observe_stages({"decode": decode_ms, **r.timings_ms})
    state.metrics.recognitions.labels("recognized" if r.best else "no_match").inc()
    response = build_response(state, request_id, r, snap, decode_ms)
    response.retained = retain(state, request_id, owner, img, r, response)
    return response


def _is_redis_error(exc: Exception) -> bool:
    try:
        import redis
    except ImportError:
        return False
    return isinstance(exc, redis.RedisError)


@router.get("/skus/{sku_id}/thumbnail", responses={404: {"model": ErrorResponse}},
            dependencies=[Depends(require_api_key)])
async def thumbnail(sku_id: str, state: State) -> Response:
    """The SKU's small catalog JPEG, when the index holds one."""
    snap = state.snapshot
    if snap is None or state.store is None:
        raise Unavailable("no index loaded", state.settings.retry_after_s)
    try:
        (meta,) = await asyncio.get_running_loop().run_in_executor(
            None, state.store.get_skus, snap.version, [sku_id])
    except Exception as exc:
        if _is_redis_error(exc):
            raise Unavailable(f"Redis unavailable: {exc}", state.settings.retry_after_s) from None
        raise
    if not meta or not meta.get("thumb"):
        raise ApiError(404, "not_found", f"no thumbnail for SKU {sku_id!r}")
    return Response(meta["thumb"], media_type="image/jpeg",
                    headers={"Cache-Control": "public, max-age=3600"})


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """Liveness: the process answers."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(state: State) -> JSONResponse:
    """Readiness: models loaded, an index version loaded, Redis answering."""
    checks, detail = await asyncio.get_running_loop().run_in_executor(None, state.readiness)
    r, snap = state.recognizer, state.snapshot
    body = ReadyResponse(
        ready=all(checks.values()), checks=checks, detail=detail,
        model_version=r.sicot.config.model_version if r else None,
        localizer_version=r.localizer.config.model_version if r and r.localizer else None,
        index_version=snap.version if snap else None,
    )
    headers = None if body.ready else {"Retry-After": str(state.settings.retry_after_s)}
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503, headers=headers)


@router.get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
