"""The API's error language: every failure is ``{"detail": "...", "code": "..."}``.

Codes are the design's closed list. The gateway's own exception tree
(``gateway.errors``) is mapped here and nowhere else, so a handler raises
``NotFound`` or ``ConflictStatus`` and never thinks about HTTP.
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import errors as ge

Code = Literal[
    "bad_request",
    "authentication_failed",
    "access_forbidden",
    "not_found",
    "conflict_status",
    "payload_too_large",
    "rate_limited",
    "error",
]

# What an HTTP status means when Starlette or FastAPI raised it themselves
# (unknown route, wrong method, unreadable body).
_CODE_BY_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "authentication_failed",
    403: "access_forbidden",
    404: "not_found",
    405: "bad_request",
    409: "conflict_status",
    413: "payload_too_large",
    415: "bad_request",
    422: "bad_request",
    429: "rate_limited",
}


class ErrorBody(BaseModel):
    """The body of every error response."""

    detail: str
    code: Code


class ApiError(Exception):
    """Raised by handlers and dependencies for an answer that is not a 2xx."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


def bad_request(detail: str) -> ApiError:
    return ApiError(400, "bad_request", detail)


def not_found(detail: str = "not found") -> ApiError:
    return ApiError(404, "not_found", detail)


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


def from_gateway_error(e: ge.GatewayError) -> ApiError:
    if isinstance(e, ge.NotFound):
        return ApiError(404, "not_found", str(e))
    if isinstance(e, ge.ConflictStatus):
        return ApiError(409, "conflict_status", str(e))
    if isinstance(e, ge.MessageTooLarge):
        return ApiError(413, "payload_too_large", str(e))
    if isinstance(e, ge.PermanentError):
        return ApiError(400, "bad_request", str(e))
    if isinstance(e, ge.TemporaryError):
        # The client may retry; the detail names the failing part, not internals.
        return ApiError(503, "error", "storage or database temporarily unavailable; retry later", {"Retry-After": "5"})
    return ApiError(500, "error", "internal error")


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body" or len(err.get("loc", ())) == 1)
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(ge.GatewayError)
    async def _gateway_error(_request: Request, exc: ge.GatewayError) -> JSONResponse:
        e = from_gateway_error(exc)
        return error_response(e.status, e.code, e.detail, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "bad_request", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_BY_STATUS.get(exc.status_code, "error" if exc.status_code >= 500 else "bad_request")
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            detail = "not found"
        return error_response(exc.status_code, code, detail, getattr(exc, "headers", None))
