"""The FastAPI application factory and its lifespan (models, Redis and index load once)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

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


class SkuApp(FastAPI):
    """The FastAPI app whose OpenAPI schema is completed from the service's settings."""

    def __init__(self, settings: ServiceSettings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings

    def openapi(self) -> dict[str, Any]:
        return openapi_schema(self, self.settings)


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

    docs = settings.docs_enabled
    app = SkuApp(
        settings,
        title="SKU recognition",
        version=__version__,
        description="POST a product photo to /recognize; get the SKU with its catalog image, "
        "title and tags. Ops: /healthz, /readyz, /metrics.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, max_body=settings.limits.max_bytes,
        limited={"/recognize"}, timeouts=settings.client_timeouts,
    )
    app.include_router(router)
    app.include_router(feedback_router)
    return app


SECURED = (("/recognize", "post"), ("/skus/{sku_id}/thumbnail", "get"))


def openapi_schema(app: FastAPI, settings: ServiceSettings) -> dict[str, Any]:
    """FastAPI's schema, completed from the settings the code checks: option ranges, image
    limits, and the API-key scheme (so generated clients send the key)."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(title=app.title, version=app.version, description=app.description,
                       routes=app.routes)
    s, lim = settings, settings.limits
    post = spec["paths"]["/recognize"]["post"]
    ranges = {
        "top_k": {"type": "integer", "minimum": 1, "maximum": s.max_top_k,
                  "default": s.default_top_k},
        "min_score": {"type": "number", "minimum": 0.0, "maximum": 1.0,
                      "default": s.default_min_score},
        "max_objects": {"type": "integer", "minimum": 1, "maximum": s.max_objects, "default": 1},
    }
    for param in post.get("parameters", []):
        if param["name"] in ranges:
            param["schema"] = {**ranges[param["name"]], "title": param["schema"].get("title")}
    post["description"] += (
        f"\n\nImage limits: at most {lim.max_bytes} bytes and {lim.max_pixels} pixels; each "
        f"side at least {lim.min_side} px (else 400 image_too_small)."
    )
    _document_request_id(spec)
    if s.auth == "required":
        spec.setdefault("components", {})["securitySchemes"] = {
            "ApiKey": {"type": "apiKey", "in": "header", "name": s.api_key_header}}
        for path, method in SECURED:
            spec["paths"][path][method]["security"] = [{"ApiKey": []}]
    app.openapi_schema = spec
    return spec


REQUEST_ID_HEADER = {"description": "the request id (the one sent in X-Request-ID, else a new "
                     "one); also in the body as request_id", "schema": {"type": "string"}}


def _document_request_id(spec: dict[str, Any]) -> None:
    """The middleware adds X-Request-ID to every answer, errors included: say so."""
    for operations in spec["paths"].values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                response.setdefault("headers", {})["X-Request-ID"] = REQUEST_ID_HEADER
