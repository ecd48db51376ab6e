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
import pickle
import signal
import struct
import sys
from dataclasses import dataclass
from itertools import count
from typing import NamedTuple

from gateway import parse
from gateway.errors import NoRoute, TemporaryError
from gateway.observability import get_logger
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

    @classmethod
    def from_settings(cls, settings) -> "PreparerConfig":
        return cls(
            root=str(settings.storage.root),
            max_depth=settings.storage.max_nesting_depth,
            queues=tuple((q.name, tuple(q.addresses)) for q in settings.queues),
        )


@dataclass
class Prepared:
    parsed: parse.ParsedMail
    routes: list[Route]
    raw_sha: str
    docs: list[tuple[parse.ParsedDocument, str]]  # each document and its sha256
    unsynced: bool = False  # blobs written by a helper, to be flushed by the parent


class Preparer:
    def __init__(self, config: PreparerConfig, blobs: LocalBlobStore | None = None) -> None:
        self.max_depth = config.max_depth
        self.blobs = blobs or LocalBlobStore(config.root)
        self.router = Router([_Queue(n, list(a)) for n, a in config.queues])
        self.queue_names = {n for n, _ in config.queues}

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
        """Parse, route (NoRoute before any blob is written), write the blobs."""
        parsed = parse.parse_message(raw, max_depth=self.max_depth)
        routes = self.routes(parsed, rcpt_to, queues)
        raw_sha = self.blobs.put_sync(raw, sync=sync)
        docs = [(d, self.blobs.put_sync(d.data, sync=sync)) for d in parsed.documents]
        return Prepared(parsed, routes, raw_sha, docs)


# --- the parent's side -------------------------------------------------------------


class _Helper:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = count()
        self.alive = True
        self.reader = asyncio.create_task(self._read())

    async def call(self, payload: tuple) -> Prepared:
        if not self.alive:
            raise TemporaryError("the parser process exited")
        rid = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        data = pickle.dumps((rid, payload), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.proc.stdin.write(_HEADER.pack(len(data)))
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()
        except (ConnectionError, RuntimeError) as e:
            self.pending.pop(rid, None)
            raise TemporaryError(f"the parser process is gone: {e}") from e
        return await fut

    async def _read(self) -> None:
        out = self.proc.stdout
        try:
            while True:
                (n,) = _HEADER.unpack(await out.readexactly(_HEADER.size))
                rid, ok, value = pickle.loads(await out.readexactly(n))
                fut = self.pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(value) if ok else fut.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception as e:  # a frame that does not load: stop using this helper
            log.error("preparer.broken", error=f"{type(e).__name__}: {e}", pid=self.proc.pid)
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        finally:
            self.alive = False
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(TemporaryError("the parser process exited"))
            self.pending.clear()

    async def close(self, timeout: float) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.stdin.close()
                await asyncio.wait_for(self.proc.wait(), timeout)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                try:
                    self.proc.kill()
                except ProcessLookupError:
                    pass
                await self.proc.wait()
        await self.reader


class PreparerProcesses:
    """``size`` helper processes, started on first use, requests spread by load."""

    def __init__(self, config: PreparerConfig, size: int) -> None:
        self.config = config
        self.size = size
        self.helpers: list[_Helper] = []
        self._lock = asyncio.Lock()
        self._closed = False

    async def _start(self) -> _Helper:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.preparer",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        helper = _Helper(proc)
        data = pickle.dumps(self.config, protocol=pickle.HIGHEST_PROTOCOL)
        proc.stdin.write(_HEADER.pack(len(data)) + data)
        return helper

    async def _helper(self) -> _Helper:
        if self._closed:
            raise TemporaryError("shutting down")
        self.helpers = [h for h in self.helpers if h.alive]
        if len(self.helpers) < self.size:
            async with self._lock:
                self.helpers = [h for h in self.helpers if h.alive]
                while len(self.helpers) < self.size:
                    try:
                        self.helpers.append(await self._start())
                    except OSError as e:
                        raise TemporaryError(f"cannot start a parser process: {e}") from e
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


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
