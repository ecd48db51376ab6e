"""The "http" component of `gateway serve`: uvicorn on the daemon's own event loop.

We bind the socket ourselves and hand it to uvicorn: a port already in use is
then an ``OSError`` from ``start()`` (the daemon reports it), not uvicorn's
``sys.exit`` inside a task. uvicorn's own signal capture is switched off — the
daemon owns SIGTERM and calls ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.api.app import create_app
from gateway.observability import get_logger

log = get_logger()


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol, with the API's error format for requests it
    rejects before the app sees them (a malformed request line or header):
    uvicorn answers those itself, in plain text."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"detail": msg, "code": "bad_request"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:  # h11 cannot answer in this state: close, as uvicorn does
            pass
        self.transport.close()


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield


class HTTPServer:
    name = "http"

    def __init__(self, rt, *, host: str | None = None, port: int | None = None) -> None:
        self.rt = rt
        http = rt.settings.http
        self.host = host or http.host
        self.port = http.port if port is None else port
        self.app = create_app(rt)
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task | None = None
        self._sock: socket.socket | None = None

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(512)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    @property
    def bound_port(self) -> int:
        assert self._sock is not None
        return self._sock.getsockname()[1]

    async def start(self) -> None:
        self._sock = self._bind()
        config = uvicorn.Config(
            self.app,
            log_config=None,  # our structlog set-up stays in charge
            access_log=False,  # RequestContext logs each request with its id
            lifespan="off",
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=15,
            http=_Protocol,
            # Concurrency is bounded by RequestContext (503 in the API's format).
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="http-server")
        while not self._server.started:
            if self._task.done():
                exc = self._task.exception()
                raise RuntimeError(f"HTTP server failed to start: {exc!r}")
            await asyncio.sleep(0.01)
        log.info("http.listening", host=self.host, port=self.bound_port)

    async def stop(self, timeout: float) -> None:
        """Stop accepting, let requests in flight finish for up to ``timeout`` seconds."""
        if self._server is None or self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = timeout
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout + 5)
        except asyncio.TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        except Exception as e:
            log.error("http.stop_failed", error=str(e))
        # A health or metrics probe that outlived its request (a locked database)
        # gets a moment to finish, then is cancelled so the loop can close cleanly.
        probes = [t for t in getattr(self.app.state, "probes", {}).values() if not t.done()]
        if probes:
            _, pending = await asyncio.wait(probes, timeout=1)
            for t in pending:
                t.cancel()
        log.info("http.stopped")
