"""The ASGI application: routes under ``/api/v1``, error language, request ids.

``create_app(rt)`` is all ``HTTPServer`` (and tests) need. Every response carries
an ``X-Request-ID``; every log line of a request carries it as ``request_id``; an
unexpected exception is logged with its stack trace under that id and the
client gets ``500 {"detail", "code": "error"}`` naming the id, never a trace.
"""

from __future__ import annotations

import time
import uuid

import structlog
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.api import documents, emails, health, queues, tasks, uploads
from gateway.api.auth import Authenticator
from gateway.api.errors import error_response, install_error_handlers
from gateway.observability import get_logger
from gateway.services import Urls

log = get_logger()

API_PREFIX = "/api/v1"


# Requests handled at once; beyond it, 503 at once (in our error format, which
# uvicorn's own limit_concurrency would not use) rather than an unbounded pile-up.
MAX_IN_FLIGHT = 1000


class RequestContext:
    """Pure ASGI middleware (no body buffering): request id, access log, bounded
    concurrency, last-resort 500."""

    def __init__(self, app, max_in_flight: int | None = None) -> None:
        self.app = app
        self.max_in_flight = max_in_flight or MAX_IN_FLIGHT
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            busy = error_response(503, "error", "server busy; retry later", {"Retry-After": "1"})
            await busy(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self._handle(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _handle(self, scope, receive, send) -> None:
        request_id = uuid.uuid4().hex[:16]
        state = {"status": None}

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.error(
                    "http.error", request_id=request_id, method=scope.get("method"), path=scope.get("path"), exc_info=True
                )
                if state["status"] is None:
                    response = error_response(500, "error", f"internal error (request id {request_id})")
                    await response(scope, receive, send_with_id)
            finally:
                log.info(
                    "http.request",
                    method=scope.get("method"),
                    path=scope.get("path"),
                    status=state["status"],
                    ms=round((time.perf_counter() - started) * 1000, 1),
                )


def create_app(rt) -> FastAPI:
    settings = rt.settings
    app = FastAPI(
        title="Email-ingestion gateway API",
        version="1",
        description=(
            "Uploads, tasks, emails and documents. Authenticate with an API key "
            "(`Authorization: Bearer KEY` or `X-API-Key: KEY`; HTTP Basic on upload creation). "
            'Errors are always `{"detail": "...", "code": "..."}`.'
        ),
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.state.rt = rt
    app.state.settings = settings
    app.state.urls = Urls(settings.http.base_url)
    app.state.auth = Authenticator(rt)
    app.state.upload_slots = uploads.upload_slots(settings)

    install_error_handlers(app)
    for module in (uploads, tasks, emails, documents, queues):
        app.include_router(module.router, prefix=API_PREFIX)
    # Probes usually look at the root; the design lists them under /api/v1 too.
    app.include_router(health.router)
    app.include_router(health.router, prefix=API_PREFIX)
    app.add_middleware(RequestContext)

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi(app, settings.http.base_url, settings.http.protect_health_and_metrics)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI, base_url: str, protect_health: bool) -> dict:
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schema["servers"] = [{"url": base_url}]
    for path, item in schema.get("paths", {}).items():
        for op in item.values():
            # Validation errors are answered 400 bad_request, not FastAPI's 422.
            op.get("responses", {}).pop("422", None)
            if path.endswith(("/healthz", "/metrics")) and not protect_health:
                # Open unless http.protect_health_and_metrics says otherwise.
                op.pop("security", None)
                op.get("responses", {}).pop("401", None)
    comps = schema.get("components", {}).get("schemas", {})
    comps.pop("HTTPValidationError", None)
    comps.pop("ValidationError", None)
    return schema
