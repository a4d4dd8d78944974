"""The learning loop's web side: opt-in query retention, ``POST /feedback`` and
``DELETE /queries/{request_id}`` (the log itself is :mod:`service.feedback`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, Field

from service.api.deps import get_state, require_api_key
from service.api.errors import ApiError, Unavailable, error_responses
from service.api.retention import owner_of
from service.api.state import ServiceState
from service.feedback import (
    REQUEST_ID_RE,
    FeedbackConflict,
    FeedbackLog,
    QueryGone,
    RetainedQuery,
)
from service.redis_server import is_redis_error

log = logging.getLogger(__name__)
router = APIRouter()
T = TypeVar("T")


class FeedbackRequest(BaseModel):
    request_id: str = Field(pattern=REQUEST_ID_RE.pattern, description="of a retained query")
    sku_id: str = Field(min_length=1, max_length=200)
    kind: Literal["confirm", "correct", "click"] = Field(
        description="confirm: the top-1 answer is right; correct: the right SKU is another; "
        "click: the shopper opened this candidate")
    rank: int | None = Field(None, ge=1, le=200, description="click: the candidate's 1-based rank")


class FeedbackResponse(BaseModel):
    request_id: str
    kind: str
    sku_id: str
    entry_id: str = Field(description="id of the entry in the feedback stream")
    duplicate: bool = Field(description="this (request_id, kind) was already recorded")
    agrees_with_top1: bool


class DeletedResponse(BaseModel):
    request_id: str
    deleted: bool
    feedback_entries_removed: int


async def _redis(state: ServiceState, fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking Redis call off the event loop; Redis failures → 503."""
    if state.redis_client is None:
        raise Unavailable("Redis unavailable", state.settings.retry_after_s)
    try:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
    except ApiError:
        raise
    except Exception as exc:
        if is_redis_error(exc):
            raise Unavailable(f"Redis unavailable: {exc}", state.settings.retry_after_s) from None
        raise


async def _owned_query(state: ServiceState, flog: FeedbackLog, request_id: str,
                       owner: str) -> RetainedQuery:
    query = await _redis(state, flog.get, request_id)
    # another key's query answers exactly like a missing one: ids are not probed
    if query is None or query.owner != owner:
        raise ApiError("query_not_found", f"no retained query {request_id!r} made with "
                       "this API key (retention off, expired, deleted, or another key's)")
    return query


def _check(body: FeedbackRequest, query: RetainedQuery) -> None:
    cands = query.candidates
    if body.kind == "confirm" and body.sku_id != query.top1:
        raise ApiError("invalid_feedback", f"confirm names {body.sku_id!r}, but the "
                       f"answer's top-1 was {query.top1!r}; send kind 'correct'")
    if body.kind == "click":
        if body.sku_id not in cands:
            raise ApiError("invalid_feedback", f"click names {body.sku_id!r}, which the "
                           "answer did not list")
        if body.rank is not None and cands.index(body.sku_id) + 1 != body.rank:
            raise ApiError("invalid_feedback", f"{body.sku_id!r} was at rank "
                           f"{cands.index(body.sku_id) + 1}, not {body.rank}")


ERRORS = error_responses(
    "missing_api_key", "invalid_api_key", "query_not_found", "feedback_conflict",
    "invalid_options", "invalid_feedback", "unknown_sku", "rate_limited", "unavailable",
)


@router.post("/feedback", response_model=FeedbackResponse, status_code=201, responses=ERRORS,
             dependencies=[Depends(require_api_key)])
async def feedback(body: FeedbackRequest, request: Request, response: Response,
                   state: Annotated[ServiceState, Depends(get_state)]) -> FeedbackResponse:
    """Tell the service which SKU a retained query really showed.  Idempotent per
    ``(request_id, kind)``: a repeat answers 200 with the first entry.  Accepted feedback goes
    to a Redis stream that the nightly ``sku-index build --feedback`` reads."""
    s, owner = state.settings, owner_of(request, state)
    flog = FeedbackLog(state.redis_client, s.key_prefix) if state.redis_client else None
    if flog is None or state.store is None or state.snapshot is None:
        raise Unavailable("the service is not ready", s.retry_after_s)
    if not await _redis(state, flog.allow, owner, s.feedback_per_minute):
        state.metrics.feedback.labels(body.kind, "rate_limited").inc()
        raise ApiError("rate_limited", f"more than {s.feedback_per_minute} feedback "
                       "requests per minute from this key", {"Retry-After": "60"})
    query = await _owned_query(state, flog, body.request_id, owner)
    _check(body, query)
    snap = state.snapshot
    (meta,) = await _redis(state, state.store.get_skus, snap.version, [body.sku_id])
    if meta is None:
        raise ApiError("unknown_sku", f"SKU {body.sku_id!r} is not in the served index "
                       f"(version {snap.version})")
    try:
        entry, created = await _redis(state, flog.record, query, body.kind, body.sku_id,
                                      body.rank, s.feedback_stream_maxlen)
    except FeedbackConflict as exc:
        raise ApiError("feedback_conflict", str(exc)) from None
    except QueryGone as exc:
        raise ApiError("query_not_found", str(exc)) from None
    agrees = body.sku_id == query.top1
    if created:
        state.metrics.feedback.labels(body.kind, "accepted").inc()
        state.metrics.feedback_agreement.labels(body.kind, "yes" if agrees else "no").inc()
    else:
        response.status_code = 200
    return FeedbackResponse(request_id=body.request_id, kind=body.kind, sku_id=body.sku_id,
                            entry_id=entry, duplicate=not created, agrees_with_top1=agrees)


@router.delete("/queries/{request_id}", response_model=DeletedResponse, responses=ERRORS,
               dependencies=[Depends(require_api_key)])
async def delete_query(
    request: Request, state: Annotated[ServiceState, Depends(get_state)],
    request_id: Annotated[str, Path(pattern=REQUEST_ID_RE.pattern)],
) -> DeletedResponse:
    """Delete a retained query (crop, answer, photo) and the feedback given on it, now.
    Only the API key that made the request may delete it."""
    if state.redis_client is None:
        raise Unavailable("Redis unavailable", state.settings.retry_after_s)
    flog = FeedbackLog(state.redis_client, state.settings.key_prefix)
    query = await _owned_query(state, flog, request_id, owner_of(request, state))
    removed = await _redis(state, flog.delete, query)
    return DeletedResponse(request_id=request_id, deleted=True, feedback_entries_removed=removed)
