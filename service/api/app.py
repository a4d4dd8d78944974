"""The FastAPI application factory and its lifespan (models, Redis and index load once)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.api.errors import install_error_handlers
from service.api.feedback import router as feedback_router
from service.api.metrics import Metrics
from service.api.middleware import RequestContextMiddleware
from service.api.routes import router
from service.api.settings import ServiceSettings, get_settings
from service.api.state import ServiceState
from service.imageio import configure_pillow_limits

log = logging.getLogger(__name__)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the app; ``settings`` default to the environment's (tests pass their own)."""
    settings = settings or get_settings()
    metrics = Metrics()
    configure_pillow_limits(settings.limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServiceState(settings, metrics)
        app.state.service = state
        await asyncio.get_running_loop().run_in_executor(None, state.initialize)
        state.start_polling()
        try:
            yield
        finally:
            await state.finalize()

    app = FastAPI(
        title="SKU recognition",
        version=__version__,
        description="POST a product photo to /recognize; get the SKU with its catalog image, "
        "title and tags. Ops: /healthz, /readyz, /metrics.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, max_body=settings.limits.max_bytes,
        limited={"/recognize"},
    )
    app.include_router(router)
    app.include_router(feedback_router)
    return app
