"""`gateway serve`: build what the config enables, supervise it, stop it cleanly.

Each component (SMTP listener, IMAP pollers, workers, HTTP API) has
``start()`` — returns once it is listening or running — and ``stop(timeout)`` —
drains what is in flight. READY=1 is sent to systemd only after every component
started; STOPPING=1 as soon as a stop signal arrives.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import Protocol

from gateway.config import Settings
from gateway.observability import get_logger
from gateway.runtime import Runtime, open_runtime

log = get_logger()


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self, timeout: float) -> None: ...


def sd_notify(message: str) -> bool:
    """Send one sd_notify datagram; False when not run under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(message.encode())
        return True
    except OSError as e:
        log.warning("daemon.notify_failed", error=str(e))
        return False


def build_components(rt: Runtime) -> list[Component]:
    """What `serve` runs, in start order (stopped in reverse)."""
    s = rt.settings
    components: list[Component] = []
    # Tasks created here wake workers everywhere (LISTEN/NOTIFY on PostgreSQL),
    # even when this instance runs no workers itself.
    from gateway.queue import wakeup

    wakeup.install(rt.ingestor, rt.engine)
    # Workers start first and stop last: on SIGTERM the ingresses stop taking
    # mail while tasks already claimed finish or are released.
    if s.workers.enabled:
        from gateway.queue.worker import WorkerPool

        components.append(WorkerPool(rt))
    if s.smtp.enabled:
        from gateway.ingress.smtp import SMTPListener

        components.append(SMTPListener(rt))
    if s.imap:
        from gateway.ingress.imap import IMAPPollers

        components.append(IMAPPollers(rt))
    if s.http.enabled:
        from gateway.api.server import HTTPServer

        components.append(HTTPServer(rt))
    return components


async def _watchdog(interval: float) -> None:
    # Sent from the event loop itself: if the loop is stuck, systemd notices.
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def serve(settings: Settings, *, stop_event: asyncio.Event | None = None) -> int:
    stop_event = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop_event.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    try:
        # Reload is not supported (a restart drains and is safe); SIGHUP's default
        # action would kill the daemon, so it is caught and logged instead.
        loop.add_signal_handler(
            signal.SIGHUP,
            lambda: log.warning("daemon.reload_unsupported", hint="use systemctl restart"),
        )
    except (NotImplementedError, RuntimeError):
        pass
    async with open_runtime(settings) as rt:
        components = build_components(rt)
        started: list[Component] = []
        try:
            for c in components:
                await c.start()
                started.append(c)
                log.info("daemon.started", component=c.name)
        except Exception as e:
            log.error("daemon.start_failed", component=c.name, error=str(e))
            for c in reversed(started):
                await c.stop(0)
            return 1
        sd_notify("READY=1")
        log.info("daemon.ready", components=[c.name for c in components])
        watchdog = None
        usec = os.environ.get("WATCHDOG_USEC")
        if usec and usec.isdigit():
            watchdog = asyncio.create_task(_watchdog(int(usec) / 1e6 / 3))
        await stop_event.wait()
        sd_notify("STOPPING=1")
        log.info("daemon.stopping")
        for c in reversed(started):
            timeout = getattr(getattr(settings, c.name, None), "shutdown_timeout", 30.0)
            try:
                await c.stop(timeout)
            except Exception as e:
                log.error("daemon.stop_failed", component=c.name, error=str(e))
        if watchdog:
            watchdog.cancel()
    log.info("daemon.stopped")
    return 0


def run_daemon(settings: Settings) -> int:
    return asyncio.run(serve(settings))
