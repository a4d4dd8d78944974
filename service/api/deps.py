"""FastAPI dependencies of the routes: the service state, the API key (and its rate), the
bounded work queue, what a request is answered from, and Redis failures as 503."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.api.auth import take_token
from service.api.errors import ApiError, IndexUnavailable, Overloaded, Unavailable
from service.api.state import REDIS_DOWN, ServiceState
from service.recognition import IndexSnapshot
from service.recognizer import Recognizer
from service.redis_server import is_redis_error
from service.store import SkuStore, VersionGone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Serving:
    """What one request is answered from (taken once, so a publish mid-request is harmless)."""

    recognizer: Recognizer
    store: SkuStore
    snapshot: IndexSnapshot


def get_state(request: Request) -> ServiceState:
    state = getattr(request.app.state, "service", None)
    if not isinstance(state, ServiceState):  # the lifespan has not run (or failed early)
        raise Unavailable("the service is starting")
    return state


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
    if state.redis_client is None or state.store is None:
        return
    try:
        wait = take_token(state.redis_client, state.store.keys, policy)
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


def require_serving(state: ServiceState) -> Serving:
    """The models, store and index snapshot to answer from, or 503 saying what is missing."""
    retry = state.settings.retry_after_s
    if state.recognizer is None or state.store is None:
        raise Unavailable("the service is not ready (models or Redis not loaded)", retry)
    snap = state.snapshot
    if snap is None:
        reason = state.follower.last_error if state.follower is not None else None
        raise IndexUnavailable(f"no index version can be served: {reason or 'none loaded'}",
                               retry)
    return Serving(state.recognizer, state.store, snap)


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


def require_key_for_metrics(request: Request, state: State) -> None:
    if state.settings.metrics_require_key:
        require_api_key(request, state)
