"""``webhook``: POST the document and its metadata to a URL.

The request is ``multipart/form-data`` with two parts: ``metadata``
(``application/json``: the task, upload and email) and ``file`` (the document
with its filename and content type). With a secret configured, the receiver
can check where it came from:

    X-Gateway-Timestamp: <unix seconds>
    X-Gateway-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

The timestamp is inside the signed bytes so that a captured request cannot be
replayed later under a fresh timestamp.

Answers: 2xx is done (a JSON body becomes the task's result); 408, 429, 5xx,
connection errors and timeouts are temporary (``Retry-After`` is honoured); any
other status is permanent, with the response's ``detail`` (or its text) kept.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import hashlib
import hmac
import json
import time

import httpx

from gateway.queue.processors import Job, Outcome, ProcessorFailed, RetryLater, tail, wants_review

RETRY_STATUSES = frozenset({408, 429})
SIGNATURE_HEADER = "X-Gateway-Signature"
TIMESTAMP_HEADER = "X-Gateway-Timestamp"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return tail(resp.text, 500)
    if isinstance(body, dict) and "detail" in body:
        d = body["detail"]
        return d if isinstance(d, str) else json.dumps(d, ensure_ascii=False)[:500]
    return tail(json.dumps(body, ensure_ascii=False), 500)


class WebhookProcessor:
    type = "webhook"

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        secret = cfg.secret
        if secret is None and cfg.secret_file is not None:
            secret = cfg.secret_file.read_text().strip()
        self._secret = secret.encode() if secret else None
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # Redirects are not followed: a POST moved elsewhere is a config error.
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.cfg.timeout), follow_redirects=False)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def run(self, job: Job) -> Outcome:
        data = await asyncio.to_thread(job.path.read_bytes)
        client = self._http()
        request = client.build_request(
            "POST",
            self.cfg.url,
            headers={**self.cfg.headers, "X-Gateway-Task": str(job.task_id), "X-Gateway-Attempt": str(job.attempt)},
            # metadata carries its type (receivers that decode parts by type need
            # it) but no filename, so form parsers still read it as a field.
            files=[
                ("metadata", (None, json.dumps(job.metadata, ensure_ascii=False, default=str).encode(), "application/json")),
                ("file", (job.filename, data, job.content_type)),
            ],
        )
        body = request.read()  # the multipart body, to sign exactly what is sent
        if self._secret is not None:
            ts = str(int(time.time()))
            request.headers[TIMESTAMP_HEADER] = ts
            request.headers[SIGNATURE_HEADER] = sign(self._secret, ts, body)
        try:
            resp = await client.send(request)
        except httpx.TimeoutException as e:
            raise RetryLater(f"webhook timed out after {self.cfg.timeout:g}s ({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise RetryLater(f"webhook unreachable: {type(e).__name__}: {e}") from e
        code = resp.status_code
        if 200 <= code < 300:
            result = None
            if resp.headers.get("content-type", "").split(";")[0].strip().endswith("json") and resp.content:
                try:
                    result = resp.json()
                except ValueError:
                    result = None
            return Outcome(result=result, review=wants_review(result))
        detail = _detail(resp)
        if code in RETRY_STATUSES or code >= 500:
            raise RetryLater(f"webhook answered {code}: {detail}", parse_retry_after(resp.headers.get("retry-after")))
        raise ProcessorFailed(f"webhook answered {code}: {detail}")
