"""Who is calling: API keys, scopes and the per-key rate limit.

A key is accepted as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` on every
endpoint, and as HTTP Basic on upload creation only (scanners and multifunction
printers can often do nothing else). With Basic, the key is the password (any
username, e.g. the organization's name) or, when the password is empty, the
username — ``curl -u KEY: ...`` works.

Order of checks: no or unknown key → 401 ``authentication_failed``; over the
rate limit → 429 ``rate_limited`` with ``Retry-After``; missing scope → 403
``access_forbidden``. Objects of another organization are never 403: every read
is filtered by the key's organization, so they are simply 404.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer

from gateway.api.errors import ApiError
from gateway.api.keys import find_active_key
from gateway.observability import get_logger
from gateway.storage import models as m
from gateway.storage.db import transaction

log = get_logger()

bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearer", description="`Authorization: Bearer KEY`")
header_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey", description="`X-API-Key: KEY`")
basic_scheme = HTTPBasic(
    auto_error=False,
    scheme_name="basic",
    description="Upload creation only: the key as password (any username), or as username with an empty password.",
)

# last_used_at is written at most this often per key: a write per request would
# serialize every read behind SQLite's single writer.
_TOUCH_INTERVAL = 60.0


@dataclass(frozen=True)
class Principal:
    key_id: int
    organization_id: int
    scopes: frozenset[str]
    prefix: str

    @property
    def actor(self) -> str:
        """How task history records a change made with this key."""
        return f"api-key:{self.key_id}"


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests, refilled continuously.

    In-process state: with several gateway instances each enforces the limit on
    its own share of the traffic.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}

    def take(self, key_id: int) -> float | None:
        """None when the request may go on, else the seconds until it may."""
        now = self.clock()
        tokens, last = self._buckets.get(key_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return None
        self._buckets[key_id] = (tokens, now)
        return (1.0 - tokens) / self.rate


class Authenticator:
    def __init__(self, rt) -> None:
        self.rt = rt
        self.limiter = RateLimiter(rt.settings.http.rate_limit_per_minute)
        self._touched: dict[int, float] = {}

    async def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise ApiError(401, "authentication_failed", "an API key is required (Authorization: Bearer KEY or X-API-Key)")
        async with transaction(self.rt.sessions) as s:
            row = await find_active_key(s, key.strip())
            if row is None:
                raise ApiError(401, "authentication_failed", "invalid or revoked API key")
            principal = Principal(row.id, row.organization_id, frozenset(row.scopes), row.prefix)
            now = time.monotonic()
            if now - self._touched.get(row.id, -_TOUCH_INTERVAL) >= _TOUCH_INTERVAL:
                self._touched[row.id] = now
                row.last_used_at = m.utcnow()
        return principal

    def limit(self, principal: Principal) -> None:
        wait = self.limiter.take(principal.key_id)
        if wait is not None:
            log.info("http.rate_limited", key_id=principal.key_id)
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit of {self.rt.settings.http.rate_limit_per_minute} requests per minute exceeded",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )


def _presented_key(request: Request, basic: HTTPBasicCredentials | None) -> str | None:
    """The one key the request carries. Fail closed: every credential header that
    is present must be usable (an empty ``Bearer``, an unknown scheme, Basic where
    it is not accepted are 401 even next to a good ``X-API-Key``), and two
    different keys are refused rather than chosen between."""
    keys: set[str] = set()
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, param = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            if not param.strip():
                raise ApiError(401, "authentication_failed", "empty Bearer token")
            keys.add(param.strip())
        elif scheme == "basic":
            if basic is None:
                raise ApiError(401, "authentication_failed", "HTTP Basic is only accepted on upload creation")
            from_basic = (basic.password or basic.username).strip()
            if not from_basic:
                raise ApiError(401, "authentication_failed", "empty HTTP Basic credentials")
            keys.add(from_basic)
        else:
            raise ApiError(401, "authentication_failed", "unsupported Authorization scheme; use Bearer")
    header_key = request.headers.get("x-api-key")
    if header_key is not None:
        if not header_key.strip():
            raise ApiError(401, "authentication_failed", "empty X-API-Key header")
        keys.add(header_key.strip())
    if len(keys) > 1:
        raise ApiError(401, "authentication_failed", "several different API keys given; send one")
    return keys.pop() if keys else None


async def _authorize(request: Request, basic: HTTPBasicCredentials | None, scope: str | None) -> Principal:
    """The one path every key takes: authenticate, rate-limit, check the scope."""
    auth: Authenticator = request.app.state.auth
    principal = await auth.authenticate(_presented_key(request, basic))
    auth.limit(principal)
    if scope is not None and scope not in principal.scopes:
        raise ApiError(403, "access_forbidden", f"this API key lacks the {scope!r} scope")
    return principal


def require(scope: str | None) -> Callable:
    """A dependency: a valid key (Bearer or X-API-Key) with ``scope``.

    The ``Security`` parameters put the schemes in the OpenAPI document; the key
    itself is read by ``_presented_key`` from the raw headers.
    """

    async def dependency(
        request: Request,
        bearer: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
        header_key: str | None = Security(header_scheme),
    ) -> Principal:
        return await _authorize(request, None, scope)

    return dependency


def require_with_basic(scope: str) -> Callable:
    """As ``require``, also accepting HTTP Basic (upload creation)."""

    async def dependency(
        request: Request,
        bearer: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
        header_key: str | None = Security(header_scheme),
        basic: HTTPBasicCredentials | None = Security(basic_scheme),
    ) -> Principal:
        return await _authorize(request, basic, scope)

    return dependency
