"""The CPU-heavy half of an ingest: parse, route, write the blobs.

``Preparer.prepare`` turns raw bytes into what the row writer needs. The ingest
runs it in one of two places:

* in a worker thread of the daemon (``parse_processes = 0``, and always for
  messages larger than ``PROCESS_MAX_BYTES``, which are not worth copying
  through a pipe);
* in helper processes (``PreparerProcesses``), ``python -m gateway.preparer``,
  fed over their stdin and answering on their stdout with length-prefixed
  pickles, several requests in flight per process.

Why processes: with 16 SMTP sessions of small messages the daemon's single
interpreter was the limit. Parsing in threads competes for the GIL with the
event loop and with the SQLite writer, whose every statement gives the GIL up
and then waits to get it back (about 1.4 ms of waiting per message against
0.6 ms of work, measured). A helper process parses on another core.

A helper writes blobs without fsync where the parent can make them durable with
one ``syncfs`` (see ``storage.blobs``); the parent is told which blobs to count
as unsynced. A helper ignores SIGINT/SIGTERM (a service stop signals the whole
group; the parent decides when its work ends) and exits when its stdin closes,
which also happens when the parent dies. A helper that dies fails its requests
with a temporary error (the sender retries) and is started again on the next
request.
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
from dataclasses import dataclass
from itertools import count
from typing import NamedTuple

from gateway import parse
from gateway.errors import NoRoute, TemporaryError
from gateway.observability import get_logger
from gateway.pipeline import PREPARE_STEPS, MailContext
from gateway.policy import QueuePolicy
from gateway.routing import Route, Router
from gateway.storage import blobs as blobs_mod
from gateway.storage.blobs import LocalBlobStore

log = get_logger()

# Larger messages are prepared in a thread of the daemon.
PROCESS_MAX_BYTES = 1024 * 1024
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

    @classmethod
    def from_settings(cls, settings) -> "PreparerConfig":
        return cls(
            root=str(settings.storage.root),
            max_depth=settings.storage.max_nesting_depth,
            queues=tuple((q.name, tuple(q.addresses)) for q in settings.queues),
            policies=tuple((q.name, QueuePolicy.from_settings(q)) for q in settings.queues),
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

    def prepare(self, raw: bytes, rcpt_to: list[str], queues: list[str] | None, *, sync: bool) -> Prepared:
        """Parse, route (NoRoute before any blob is written), plan, write the blobs."""
        self.sync_blobs = sync
        ctx = MailContext(raw=raw, rcpt_to=list(rcpt_to), queues=queues)
        for step in PREPARE_STEPS:
            step(ctx, self)
        return ctx


# --- the parent's side -------------------------------------------------------------


class _Helper:
    """One helper process and the requests in flight to it.

    It talks over one end of a socketpair given to it as stdin and stdout: the
    parent uses ordinary asyncio socket streams, and needs no child watcher
    (the process is reaped in a thread when it is closed or found dead).
    """

    def __init__(self, proc: subprocess.Popen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proc = proc
        self.stream_reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = count()
        self.alive = True
        self.closing = False
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
        helper = cls(proc, reader, writer)
        log.info("preparer.started", pid=proc.pid)
        data = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
        writer.write(_HEADER.pack(len(data)) + data)
        return helper

    async def call(self, payload: tuple) -> Prepared:
        if not self.alive:
            raise TemporaryError("the parser process exited")
        rid = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        data = pickle.dumps((rid, payload), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.writer.write(_HEADER.pack(len(data)))
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as e:
            self.pending.pop(rid, None)
            raise TemporaryError(f"the parser process is gone: {e}") from e
        return await fut

    async def _read(self) -> None:
        try:
            while True:
                (n,) = _HEADER.unpack(await self.stream_reader.readexactly(_HEADER.size))
                rid, ok, value = pickle.loads(await self.stream_reader.readexactly(n))
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
    """``size`` helper processes, started on first use, requests spread by load."""

    def __init__(self, config: PreparerConfig, size: int) -> None:
        self.config = config
        self.size = size
        self.helpers: list[_Helper] = []
        self._lock = asyncio.Lock()
        self._closed = False

    async def _helper(self) -> _Helper:
        if self._closed:
            raise TemporaryError("shutting down")
        self.helpers = [h for h in self.helpers if h.alive]
        if len(self.helpers) < self.size:
            async with self._lock:
                self.helpers = [h for h in self.helpers if h.alive]
                while len(self.helpers) < self.size and not self._closed:
                    try:
                        helper = await _Helper.start(self.config)
                    except OSError as e:
                        raise TemporaryError(f"cannot start a parser process: {e}") from e
                    # (Not helpers.append(await ...): close() may swap the list meanwhile.)
                    self.helpers.append(helper)
            if self._closed:  # close() ran while this one was starting
                await self.close()
                raise TemporaryError("shutting down")
        return min(self.helpers, key=lambda h: len(h.pending))

    async def prepare(self, raw: bytes, rcpt_to: list[str], queues: list[str] | None) -> Prepared:
        helper = await self._helper()
        return await helper.call((raw, list(rcpt_to), queues))

    async def close(self, timeout: float = 5.0) -> None:
        self._closed = True
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
    while (frame := _read_frame(inp)) is not None:
        rid, (raw, rcpt_to, queues) = pickle.loads(frame)
        try:
            result = preparer.prepare(raw, rcpt_to, queues, sync=sync)
            result.unsynced = not sync
            result.raw = b""  # the parent has it: not worth sending back
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
