"""The CPU-heavy half of an ingest: parse, route, write the blobs.

``Preparer.prepare`` turns raw bytes into what the row writer needs. The ingest
runs it in one of two places:

* in helper processes (``PreparerProcesses``), ``python -m gateway.preparer``,
  fed over a socket with length-prefixed pickles, several requests in flight
  per process, answered in order; the answer carries no document bytes (the
  helper wrote the blobs), only their sizes;
* in a worker thread of the daemon (``parse_processes = 0``).

Every parse has a deadline (``[storage] parse_timeout``). A helper whose
current request runs past it is killed, the request fails with
``ParseTimeout`` (the ingest then stores the mail unparsed, for a person to
review), and a new helper starts. Requests queued behind a parse that has run
for ``STALL_SECONDS`` are sent to another helper (started for the purpose if
need be, at most ``parse_processes`` or 2 more), so that one slow mail does not
hold the mails behind it. In a thread a parse cannot be stopped: past the
deadline it is abandoned.

Why processes: with 16 SMTP sessions of small messages the daemon's single
interpreter was the limit. Parsing in threads competes for the GIL with the
event loop and with the SQLite writer, whose every statement gives the GIL up
and then waits to get it back (about 1.4 ms of waiting per message against
0.6 ms of work, measured). A helper process parses on another core.

A helper writes blobs without fsync where the parent can make them durable with
one ``syncfs`` (see ``storage.blobs``); the parent is told which blobs to count
as unsynced. A helper ignores SIGINT/SIGTERM (a service stop signals the whole
group; the parent decides when its work ends) and exits when its stdin closes,
which also happens when the parent dies. A helper that dies on its own fails its
requests with a temporary error (the sender retries) and is started again on
the next request.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from itertools import count
from typing import NamedTuple

from gateway import parse
from gateway.errors import NoRoute, TemporaryError
from gateway.observability import get_logger
from gateway.pipeline import PREPARE_STEPS, MailContext, parse_step
from gateway.policy import QueuePolicy
from gateway.routing import Route, Router
from gateway.sender_check import AuthConfig, SenderVerifier
from gateway.storage import blobs as blobs_mod
from gateway.storage.blobs import LocalBlobStore

log = get_logger()

# A request waiting behind a parse that has run this long goes to another helper.
STALL_SECONDS = 1.0
_START_TIMEOUT = 60.0
_READY = b"READY\n"
_WATCH_INTERVAL = 0.2


class ParseTimeout(Exception):
    """The parse ran past [storage] parse_timeout and was stopped."""


class _Requeue(Exception):
    """The request was taken back from a helper before it started: send it again."""
_HEADER = struct.Struct("!Q")


class _Queue(NamedTuple):
    name: str
    addresses: list[str]


@dataclass(frozen=True)
class PreparerConfig:
    """What a helper needs (picklable, no secrets)."""

    root: str
    max_depth: int
    queues: tuple[tuple[str, tuple[str, ...]], ...]
    policies: tuple[tuple[str, QueuePolicy], ...] = ()
    auth: AuthConfig | None = None  # [authentication], when enabled

    @classmethod
    def from_settings(cls, settings) -> "PreparerConfig":
        return cls(
            root=str(settings.storage.root),
            max_depth=settings.storage.max_nesting_depth,
            queues=tuple((q.name, tuple(q.addresses)) for q in settings.queues),
            policies=tuple((q.name, QueuePolicy.from_settings(q)) for q in settings.queues),
            auth=AuthConfig.from_settings(settings),
        )


# What a prepare hands to the commit: the pipeline's context.
Prepared = MailContext


class Preparer:
    """Runs the pipeline's prepare steps (``pipeline.PREPARE_STEPS``)."""

    def __init__(self, config: PreparerConfig, blobs: LocalBlobStore | None = None) -> None:
        self.max_depth = config.max_depth
        self.blobs = blobs or LocalBlobStore(config.root)
        self.router = Router([_Queue(n, list(a)) for n, a in config.queues])
        self.queue_names = {n for n, _ in config.queues}
        self._policies = dict(config.policies)
        self.sync_blobs = False
        self.verifier = SenderVerifier(config.auth) if config.auth is not None else None

    def policy(self, queue: str) -> QueuePolicy:
        return self._policies.get(queue) or QueuePolicy()

    def routes(self, parsed: parse.ParsedMail, rcpt_to: list[str], queues: list[str] | None) -> list[Route]:
        if queues:
            unknown = [q for q in queues if q not in self.queue_names]
            if unknown:
                raise NoRoute(f"unknown queue: {', '.join(unknown)}")
            return [Route(q, "", None) for q in dict.fromkeys(queues)]
        # The envelope is authoritative when there is one (SMTP); a message read
        # from disk or a mailbox only has its headers to go by.
        addresses = rcpt_to or [*parsed.delivered_to, *parsed.to, *parsed.cc]
        routes = self.router.route_all(addresses)
        if not routes:
            raise NoRoute("no recipient routes to a queue")
        return routes

    def prepare(self, raw: bytes, rcpt_to: list[str], queues: list[str] | None, *, sync: bool,
                source: str = "", sender: tuple = (None, None, None)) -> Prepared:
        """Verify, parse, route (NoRoute before any blob is written), plan, write the blobs."""
        self.sync_blobs = sync
        ctx = MailContext(raw=raw, rcpt_to=list(rcpt_to), queues=queues, source=source, sender=tuple(sender))
        for step in PREPARE_STEPS:
            step(ctx, self)
        return ctx

    def prepare_unparsed(self, raw: bytes, rcpt_to: list[str], queues: list[str] | None, *, reason: str,
                         source: str = "", sender: tuple = (None, None, None)) -> Prepared:
        """A mail whose parse did not finish: stored all the same, its raw
        message the one document, its task held for a person."""
        self.sync_blobs = False
        ctx = MailContext(raw=raw, rcpt_to=list(rcpt_to), queues=queues, source=source, sender=tuple(sender))
        for step in PREPARE_STEPS:
            if step is parse_step:
                ctx.parsed = parse.unparsed_mail(ctx.raw, reason)
            else:
                step(ctx, self)
        for plans in ctx.plans.values():
            for p in plans:
                if p.index == 0:
                    p.task, p.status, p.reason = True, "reviewing", reason
        return ctx


# --- the parent's side -------------------------------------------------------------


class _Helper:
    """One helper process and the requests in flight to it.

    It talks over one end of a socketpair given to it as stdin and stdout: the
    parent uses ordinary asyncio socket streams, and needs no child watcher
    (the process is reaped in a thread when it is closed or found dead). The
    helper answers in the order it was asked: the oldest request in flight is
    the one it is working on (``head_since`` tells since when).
    """

    def __init__(self, proc: subprocess.Popen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proc = proc
        self.stream_reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future] = {}  # in the order sent
        self.ids = count()
        self.alive = True
        self.closing = False
        self.stalled = False  # its head request has run past STALL_SECONDS
        self.head_since = time.monotonic()
        self.reaped: asyncio.Future | None = None
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, config: "PreparerConfig") -> "_Helper":
        parent, child = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.preparer"],
                stdin=child,
                stdout=child,
                close_fds=True,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        reader, writer = await asyncio.open_connection(sock=parent)
        data = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
        writer.write(_HEADER.pack(len(data)) + data)
        # Its start-up (imports, about a second) is not counted against the
        # first request's deadline: it says when it is ready.
        try:
            await asyncio.wait_for(reader.readexactly(len(_READY)), _START_TIMEOUT)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
            proc.kill()
            writer.close()
            await asyncio.get_running_loop().run_in_executor(None, _reap, proc)
            raise OSError(f"the parser process did not start: {type(e).__name__}") from e
        helper = cls(proc, reader, writer)
        log.info("preparer.started", pid=proc.pid)
        return helper

    async def submit(self, payload: tuple) -> asyncio.Future:
        """Send a request; the future resolves with its answer."""
        if not self.alive:
            raise TemporaryError("the parser process exited")
        rid = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        if not self.pending:
            self.head_since = time.monotonic()
        self.pending[rid] = fut
        data = pickle.dumps((rid, payload), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.writer.write(_HEADER.pack(len(data)))
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as e:
            if fut.done():  # killed by the watchdog while sending (a deadline, a requeue)
                return fut
            self.pending.pop(rid, None)
            raise TemporaryError(f"the parser process is gone: {e}") from e
        return fut

    def head_age(self, now: float) -> float:
        return now - self.head_since if self.pending else 0.0

    def requeue_waiting(self) -> int:
        """Take back every request but the one being worked on. The helper
        still parses them later; their answers are then dropped (their blobs
        are content-addressed: writing them twice is harmless)."""
        waiting = list(self.pending)[1:]
        for rid in waiting:
            fut = self.pending.pop(rid)
            if not fut.done():
                fut.set_exception(_Requeue())
        return len(waiting)

    def kill_for_timeout(self, timeout: float) -> None:
        """The head request ran past the deadline: fail it, send the others
        elsewhere, and kill the process (its reader then reaps it)."""
        self.requeue_waiting()
        if self.pending:
            rid = next(iter(self.pending))
            fut = self.pending.pop(rid)
            if not fut.done():
                fut.set_exception(ParseTimeout(f"parsing took longer than {timeout:g} s"))
        self.alive = False
        self.closing = True  # an expected exit: not logged as a crash
        log.warning("preparer.killed", pid=self.proc.pid, reason="parse_timeout", timeout=timeout)
        try:
            self.proc.kill()
        except OSError:
            pass

    async def _read(self) -> None:
        try:
            while True:
                (n,) = _HEADER.unpack(await self.stream_reader.readexactly(_HEADER.size))
                rid, ok, value = pickle.loads(await self.stream_reader.readexactly(n))
                self.head_since = time.monotonic()
                self.stalled = False
                fut = self.pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(value) if ok else fut.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception as e:  # a frame that does not load: stop using this helper
            log.error("preparer.broken", error=f"{type(e).__name__}: {e}", pid=self.proc.pid)
        finally:
            self.alive = False
            if not self.closing:
                # Its messages get a temporary error (SMTP 451: the sender retries).
                log.error("preparer.exited", pid=self.proc.pid, failed_requests=len(self.pending))
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(TemporaryError("the parser process exited"))
            self.pending.clear()
            self.writer.close()  # a helper still running reads EOF and exits
            try:  # reap it (or kill it) without holding the loop
                self.reaped = asyncio.get_running_loop().run_in_executor(None, _reap, self.proc)
            except RuntimeError:  # the loop is shutting down: the OS reaps it later
                pass

    async def close(self, timeout: float) -> None:
        """Say EOF; wait for the helper to finish what it holds and exit."""
        self.closing = True
        if not self.reader.done():
            try:
                self.writer.write_eof()
            except (OSError, RuntimeError):
                self.writer.close()
            try:
                await asyncio.wait_for(asyncio.shield(self.reader), timeout)
            except asyncio.TimeoutError:
                self.proc.kill()
                self.writer.close()
                await self.reader
        if self.reaped is not None:
            await self.reaped


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class PreparerProcesses:
    """``size`` helper processes, started on first use, requests spread by
    load; a few more while some are stuck on a slow parse."""

    def __init__(self, config: PreparerConfig, size: int, parse_timeout: float = 20.0) -> None:
        self.config = config
        self.size = size
        self.parse_timeout = parse_timeout
        # Spares stand in for helpers stuck on a slow parse, until the deadline kills those.
        self.most = size + max(size, 2)
        self.helpers: list[_Helper] = []
        self._lock = asyncio.Lock()
        self._closed = False
        self._watch: asyncio.Task | None = None

    async def _helper(self) -> _Helper:
        if self._closed:
            raise TemporaryError("shutting down")
        self.helpers = [h for h in self.helpers if h.alive]
        ready = [h for h in self.helpers if not h.stalled]
        # Spares replace stalled helpers (a stuck helper is killed at the deadline).
        if len(ready) < self.size and len(self.helpers) < self.most:
            async with self._lock:
                self.helpers = [h for h in self.helpers if h.alive]
                ready = [h for h in self.helpers if not h.stalled]
                while len(ready) < self.size and len(self.helpers) < self.most and not self._closed:
                    try:
                        helper = await _Helper.start(self.config)
                    except OSError as e:
                        raise TemporaryError(f"cannot start a parser process: {e}") from e
                    # (Not helpers.append(await ...): close() may swap the list meanwhile.)
                    self.helpers.append(helper)
                    ready.append(helper)
            if self._closed:  # close() ran while this one was starting
                await self.close()
                raise TemporaryError("shutting down")
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._watchdog(), name="preparer-watchdog")
        if ready:
            return min(ready, key=lambda h: len(h.pending))
        alive = [h for h in self.helpers if h.alive]
        if not alive:
            raise TemporaryError("no parser process")
        # All stuck: the one whose current parse is youngest is likeliest to be free first.
        now = time.monotonic()
        return min(alive, key=lambda h: h.head_age(now))

    async def prepare(self, raw: bytes, rcpt_to: list[str], queues: list[str] | None,
                      source: str = "", sender: tuple = (None, None, None)) -> Prepared:
        """Raises ParseTimeout when the parse ran past the deadline."""
        payload = (raw, list(rcpt_to), queues, source, tuple(sender))
        for _ in range(8):  # each round follows a helper taken out of service
            helper = await self._helper()
            fut = await helper.submit(payload)
            try:
                return await fut
            except _Requeue:
                continue
        raise TemporaryError("the parser processes kept stalling")

    async def _watchdog(self) -> None:
        """Kill a helper stuck past the deadline; move requests queued behind
        a slow parse to another helper."""
        while not self._closed and any(h.alive for h in self.helpers):
            await asyncio.sleep(_WATCH_INTERVAL)
            now = time.monotonic()
            for h in list(self.helpers):
                if not h.alive or not h.pending:
                    continue
                age = h.head_age(now)
                if age > self.parse_timeout:
                    h.kill_for_timeout(self.parse_timeout)
                elif age > STALL_SECONDS and not h.stalled:
                    h.stalled = True
                    moved = h.requeue_waiting()
                    log.info("preparer.stalled", pid=h.proc.pid, seconds=round(age, 1), moved=moved)

    async def close(self, timeout: float = 5.0) -> None:
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
        helpers, self.helpers = self.helpers, []
        await asyncio.gather(*(h.close(timeout) for h in helpers), return_exceptions=True)


# --- the helper's side ---------------------------------------------------------------


def _read_frame(stream) -> bytes | None:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (n,) = _HEADER.unpack(head)
    data = stream.read(n)
    return data if len(data) == n else None


def _answer(rid: int, ok: bool, value) -> bytes:
    try:
        return pickle.dumps((rid, ok, value), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # an exception that does not pickle: its text does
        err = TemporaryError(f"{type(value).__name__}: {value} ({type(e).__name__} while answering)")
        return pickle.dumps((rid, False, err), protocol=pickle.HIGHEST_PROTOCOL)


def _die_with_parent() -> None:
    """Linux: be killed when the parent dies, even if something else still
    holds our socket open (EOF on stdin is the normal way out). Strictly, when
    the parent *thread* that started us ends: helpers are started from the
    event loop's thread, which lives as long as the daemon."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _strip(ctx: MailContext) -> None:
    """What goes back to the parent: no bytes it does not need (the blobs are
    written; the rows want sizes and hashes), so a 30 MB mail is not copied
    back through the socket."""
    ctx.raw = b""
    stripped = [replace(d, data=b"", nbytes=d.size) for d in ctx.parsed.documents]
    ctx.docs = [(d, sha) for d, (_, sha) in zip(stripped, ctx.docs)]
    ctx.parsed = replace(ctx.parsed, documents=stripped)


def main() -> None:
    parent = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the prctl
        return
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the pipe
    first = _read_frame(inp)
    if first is None:
        return
    preparer = Preparer(pickle.loads(first))
    # Without syncfs the parent cannot flush what this process wrote: fsync here.
    sync = blobs_mod._syncfs is None
    out.write(_READY)
    out.flush()
    while (frame := _read_frame(inp)) is not None:
        rid, (raw, rcpt_to, queues, source, sender) = pickle.loads(frame)
        try:
            result = preparer.prepare(raw, rcpt_to, queues, sync=sync, source=source, sender=sender)
            result.unsynced = not sync
            _strip(result)
            data = _answer(rid, True, result)
        except Exception as e:
            data = _answer(rid, False, e)
        out.write(_HEADER.pack(len(data)))
        out.write(data)
        out.flush()


if __name__ == "__main__":
    # Run the module's own copy, not this __main__ one: the classes in the
    # answers must pickle as gateway.preparer.*, which the parent can load.
    from gateway import preparer

    preparer.main()
