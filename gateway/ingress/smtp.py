"""The SMTP listener: a thin aiosmtpd adapter onto ``Ingestor.ingest``.

What a sending MTA sees is the design's SMTP table: 250 at RCPT only for an address
that routes to a queue (no open relay), 250 2.0.0 after DATA only once the ingest
transaction has committed, 451 4.3.0 for anything that may work later, 5xx for
what never will. The pieces:

* ``GatewayHandler`` — aiosmtpd handler hooks (EHLO, MAIL, RCPT, DATA,
  exception): routing, the envelope, the mapping of ``gateway.errors`` to replies.
* ``GatewaySMTP`` — the protocol, subclassed for what a handler cannot do:
  connection limits (421 before the greeting), a DATA reader that ends the data
  only on ``CRLF . CRLF``, takes bare-LF line ends as line ends (as Postfix 3.9's
  ``smtpd_forbid_bare_newline = normalize``), refuses bare CR and any lone-dot
  line that some other server could take for an end of data (SMTP smuggling),
  and enforces the size limit while reading (552 5.3.4,
  nothing kept past the limit) and the memory budget shared by all sessions
  (452 4.3.1, the sender retries), and a graceful stop.
* ``SMTPListener`` — the ``gateway serve`` component: a server on the daemon's own
  loop (not aiosmtpd's threaded ``Controller``), per-peer counts, the ingests in
  flight, ``stop(timeout)``.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import Counter
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from itertools import count
from typing import TYPE_CHECKING

from aiosmtpd.smtp import SMTP

from gateway.errors import MessageTooLarge, NoRoute, PermanentError, TemporaryError
from gateway.sender_check import SenderRejected
from gateway.ingest import Envelope, IngestResult
from gateway.observability import SMTP_BUFFERED_BYTES, SMTP_REPLIES, SMTP_SESSIONS, get_logger

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = get_logger()

# DATA is read in chunks of at most this many bytes (the stream reader's limit).
# Lines of any length are accepted, as most MTAs do; only the total size counts.
_READ_CHUNK = 64 * 1024
# Messages larger than this are checked and un-dot-stuffed in a worker thread.
_THREAD_FINISH_BYTES = 1024 * 1024
# While DATA streams in, push the idle timeout forward every this many bytes: the
# timeout is for a silent peer, not for a large message on a slow link.
_TIMEOUT_RESET_BYTES = 256 * 1024

REPLY_TEMPORARY = "451 4.3.0 Temporary failure, please try again later"
REPLY_MEMORY_FULL = "452 4.3.1 Insufficient system storage, please try again later"
REPLY_SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_ANGLE_ADDR = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")


class _Reject(Exception):
    """A DATA problem found while reading; the reply is sent once the dot arrived."""

    def __init__(self, reply: str, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason


def _peer_host(peer) -> str | None:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer) if peer else None


# The labelled counters, looked up once: ``labels()`` on every reply line was a
# measurable share of the per-message CPU on the event loop.
_REPLY_COUNTERS: dict[str, object] = {}


def _count_reply(status: str) -> None:
    if status[3:4] != "-":  # the last line of a reply only
        cls = status[:1] + "xx"
        counter = _REPLY_COUNTERS.get(cls)
        if counter is None:
            counter = _REPLY_COUNTERS[cls] = SMTP_REPLIES.labels(cls)
        counter.inc()


class GatewayHandler:
    """aiosmtpd handler hooks: the returned string is the SMTP reply."""

    def __init__(self, listener: "SMTPListener") -> None:
        self.listener = listener
        self.ingestor = listener.rt.ingestor
        self.settings = listener.rt.settings.smtp

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        out = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        # SIZE is advertised here and not through aiosmtpd's data_size_limit,
        # whose checks answer 552 without the enhanced code 5.3.4; the size is
        # enforced by handle_MAIL (SIZE=) and GatewaySMTP._read_data.
        out.insert(1, f"250-SIZE {self.settings.max_message_size}")
        return out

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        for opt in mail_options:
            key, _, value = opt.partition("=")
            if key == "SIZE" and value.isdigit() and int(value) > self.settings.max_message_size:
                return "552 5.3.4 Message size exceeds fixed maximum message size"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return "452 4.5.3 Too many recipients"
        # Checked here, per recipient: an address that routes nowhere is refused
        # before any data is sent, so the gateway is never an open relay.
        if not self.ingestor.routes_for([address]):
            server.log.info("smtp.rejected", code=550, reason="no route", rcpt=address)
            return "550 5.1.1 No such mailbox here"
        if address not in envelope.rcpt_tos:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        mail_from = envelope.mail_from or ""
        env = Envelope(
            mail_from="" if mail_from == "<>" else mail_from,
            rcpt_to=list(envelope.rcpt_tos),
            peer=_peer_host(session.peer),
            helo=session.host_name,
            tls=session.ssl is not None,
        )
        raw: bytes = envelope.original_content
        slog = server.log.bind(size=len(raw), mail_from=env.mail_from)
        try:
            result = await self.listener.ingest(raw, env, held=server.take_held())
        except MessageTooLarge as e:
            slog.info("smtp.rejected", code=552, reason=str(e))
            return "552 5.3.4 Message size exceeds fixed maximum message size"
        except NoRoute as e:
            slog.info("smtp.rejected", code=550, reason=str(e))
            return "550 5.1.1 No such mailbox here"
        except SenderRejected as e:
            # The queue's sender_policy refuses it: a bounce the sender sees, never a silent drop.
            slog.info("smtp.rejected", code=550, reason=str(e))
            why = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in str(e))[:300]
            return f"550 5.7.1 Sender refused by policy: {why}"
        except PermanentError as e:
            slog.info("smtp.rejected", code=554, reason=str(e))
            return "554 5.6.0 Message refused"
        except TemporaryError as e:
            slog.warning("smtp.deferred", code=451, reason=str(e))
            return REPLY_TEMPORARY
        except Exception as e:
            # Whatever it was, the sender must keep the message and retry: a 5xx
            # here would make it bounce (mail lost), aiosmtpd's default is 500.
            slog.exception("smtp.deferred", code=451, reason=f"{type(e).__name__}: {e}")
            return REPLY_TEMPORARY
        server.messages += 1
        ids = " ".join(str(i) for i in result.upload_ids)
        slog.info(
            "smtp.accepted",
            email_id=result.email_id,
            upload_id=result.upload_ids,
            queue=[u.queue for u in result.uploads],
            status=result.status,
        )
        word = "duplicate of upload" if result.status == "duplicate" else "queued as upload"
        return f"250 2.0.0 OK {word} {ids} (email {result.email_id})"

    async def handle_exception(self, error: Exception) -> str:
        # Safety net for an exception escaping a command: never aiosmtpd's
        # "500 Error: (Class) text", which bounces the mail and leaks internals.
        log.error("smtp.error", error=f"{type(error).__name__}: {error}", exc_info=error)
        return REPLY_TEMPORARY


class GatewaySMTP(SMTP):
    """aiosmtpd's protocol with limits, a strict DATA reader and a graceful stop."""

    # The stream reader's limit: also the size of the chunks DATA is read in.
    # Larger than aiosmtpd's 1001 so that fewer pauses of the transport happen
    # on a fast sender; command lines are still held to 512 bytes.
    line_length_limit = _READ_CHUNK

    def __init__(self, handler: GatewayHandler, listener: "SMTPListener", **kwargs) -> None:
        super().__init__(handler, **kwargs)
        self.listener = listener
        self.messages = 0  # accepted on this connection
        self.busy = False  # between DATA and its reply: finish it before stopping
        self.refusal: str | None = None
        self._peer_key: str | None = None
        self.log = log
        self._registered = False
        self._held = 0  # bytes of the memory budget this session holds

    # --- connection accounting --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._registered:  # not the second call made by STARTTLS
            self._registered = True
            peer = transport.get_extra_info("peername")
            self.log = log.bind(peer=_peer_host(peer), session=next(self.listener.session_ids))
            self.refusal = self.listener.admit(self, _peer_host(peer))
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._registered:
            self._registered = False
            self.listener.release(self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self.refusal:
            self.log.warning("smtp.refused", code=421, reason=self.refusal)
            await self.push(f"421 4.7.0 {self.refusal}, try again later")
            self.transport.close()
            return
        if self.listener.closing:
            await self.push(REPLY_SHUTTING_DOWN)
            self.transport.close()
            return
        self.log.info("smtp.connected")
        await super()._handle_client()

    async def push(self, status) -> None:
        _count_reply(status if isinstance(status, str) else status.decode("ascii", "replace"))
        await super().push(status)

    def close_for_shutdown(self) -> None:
        """Say 421 and hang up (an idle session, or a message that ran out of time)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(REPLY_SHUTTING_DOWN.encode() + b"\r\n")
            _count_reply(REPLY_SHUTTING_DOWN)
            self.transport.close()

    # --- commands -----------------------------------------------------------------

    async def smtp_MAIL(self, arg: str) -> None:
        if self.messages >= self.listener.settings.max_messages_per_connection:
            self.log.warning("smtp.refused", code=421, reason="too many messages")
            await self.push("421 4.7.0 Too many messages on one connection, reconnect")
            self.transport.close()
            return
        await super().smtp_MAIL(arg)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parsing (same rules and results) without the
        ``typing.Protocol`` class its version defines on every call: building
        that class was about 60 us, twice per message (MAIL and RCPT). The
        common ``<dot-atom@dot-atom>`` form is matched by a regex first (the
        header parser's result for it is the same text); anything else goes
        through the header parser."""
        if not arg:
            return "", ""
        m = _SIMPLE_ANGLE_ADDR.match(arg)
        rest = arg[m.end():].lstrip(" \t") if m is not None else ""
        if m is not None and not rest.startswith("("):  # (a comment: the parser's job)
            addr = m.group(1)
            if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
                return None, None
            return addr, rest
        try:
            if arg.lstrip().startswith("<"):
                address, rest = get_angle_addr(arg)
            else:
                address, rest = get_addr_spec(arg)
        except HeaderParseError:
            return None, None
        addr = address.addr_spec
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        self.busy = True
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            try:
                content = await self._read_data()
            except _Reject as r:
                self.log.warning("smtp.rejected", code=int(r.reply[:3]), reason=r.reason)
                self._set_post_data_state()
                await self.push(r.reply)
                return
            if content is None:  # the peer went away mid-DATA
                return
            self.envelope.content = content
            self.envelope.original_content = content
            # The idle timeout must not cut a session whose message is being
            # stored: that would turn a slow commit into a retry.
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            try:
                status = await self._call_handler_hook("DATA")
            finally:
                if self.transport is not None:  # (not after connection_lost)
                    self._reset_timeout()
            self._set_post_data_state()
            await self.push(status)
        finally:
            self.busy = False
            self.listener.unreserve(self.take_held())  # unless the ingest took them
            if self.listener.closing:
                self.close_for_shutdown()

    def take_held(self) -> int:
        held, self._held = self._held, 0
        return held

    async def _read_data(self) -> bytes | None:
        """Read up to the lone dot; return the un-dot-stuffed message.

        Read in chunks of up to _READ_CHUNK bytes, not line by line: the end of
        data is ``CRLF . CRLF`` and nothing else, so the reader looks for
        ``.CRLF`` and accepts it only when the two bytes before it are CRLF (or
        it opens the data). A line-by-line loop cost more CPU than the rest of
        the protocol for a 200 KB message.

        Line ends are checked once the data is complete (``_finish_data``). The size
        limit is checked as bytes arrive; past it nothing more is kept. Either way
        the rest of the data is read up to the dot, so the session stays in step.
        Every byte kept is reserved from the listener's memory budget first; when
        the budget is spent, nothing more is kept and the message gets 452 4.3.1
        (temporary: the sender retries once others are stored).
        Returns None when the peer went away.
        """
        limit = self.listener.settings.max_message_size
        listener = self.listener
        reader = self._reader
        parts: list[bytes] = []
        over_budget = False
        size = 0
        since_reset = 0
        tail = b"\r\n"  # the CRLF that ended the DATA command
        while self.transport is not None:
            try:
                chunk = await reader.readuntil(b".\r\n")
                dot = True
            except asyncio.LimitOverrunError as e:
                # No ".CRLF" within the limit. e.consumed keeps the last two bytes
                # buffered, so a ".CRLF" is never split between two chunks.
                chunk = await reader.read(e.consumed)
                dot = False
            except asyncio.IncompleteReadError:
                return None
            last = dot and (chunk[-5:-3] if len(chunk) >= 5 else (tail + chunk)[-5:-3]) == b"\r\n"
            if last:
                chunk = chunk[:-3]  # the terminating ".CRLF"
            size += len(chunk)
            if size <= limit and not over_budget:
                if listener.reserve(len(chunk)):
                    self._held += len(chunk)
                    parts.append(chunk)
                else:
                    over_budget = True
            if (size > limit or over_budget) and parts:
                parts.clear()  # keep nothing more
                listener.unreserve(self.take_held())
            if last:
                break
            since_reset += len(chunk)
            if since_reset >= _TIMEOUT_RESET_BYTES:
                since_reset = 0
                self._reset_timeout()
            tail = (tail + chunk)[-2:]
        else:
            return None
        if size > limit:
            raise _too_big(limit)
        if over_budget:
            raise _Reject(REPLY_MEMORY_FULL, f"memory budget of {listener.budget} bytes in use by other messages")
        data = b"".join(parts)
        parts.clear()
        if len(data) > _THREAD_FINISH_BYTES:
            # Counting and copying tens of MB would hold the event loop.
            return await asyncio.to_thread(_finish_data, data)
        return _finish_data(data)


# A dot alone between two line breaks of which at least one is not CRLF (the
# reader stopped at the first CRLF.CRLF, so none is left in the data): the
# SMTP-smuggling payloads <LF>.<LF>, <LF>.<CR><LF>, <CR><LF>.<LF>, <CR>.<CR>,
# <CR><LF>.<CR><CR><LF>... A server on the way in or out may have taken it
# for the end of the data and what follows for a second message.
_FAKE_END_OF_DATA = re.compile(rb"[\r\n]\.[\r\n]")
# The start of every line, whether it ended in CRLF or in a bare LF.
_LINE_START_DOT = re.compile(rb"^\.", re.MULTILINE)


def _finish_data(data: bytes) -> bytes:
    """Check the line ends; undo dot-stuffing (RFC 5321 4.5.2).

    A bare LF ends a line, as Postfix 3.9 does by default (scanners and small
    scripts send them; ``smtpd_forbid_bare_newline = normalize``), but the data
    is returned as received: the stored raw is what the sender sent, and the
    fingerprint already reads CRLF and LF alike. A lone-dot line next to a
    bare CR or LF does not end the data (nor does it for Postfix) and is
    refused rather than kept as content: no honest client sends one (it would
    be dot-stuffed), and what follows it is a second, forged message meant for
    a server that splits there. A bare CR is refused: no client we serve sends
    it, and our parser would take it for a line end where Postfix does not.
    """
    crlf = data.count(b"\r\n")
    cr = data.count(b"\r")
    if cr == crlf and data.count(b"\n") == crlf:  # CRLF only: the common case
        if b"\r\n." not in data and not data.startswith(b"."):
            return data
        return (b"\r\n" + data).replace(b"\r\n.", b"\r\n")[2:]
    if _FAKE_END_OF_DATA.search(data) or data[:2] in (b".\r", b".\n"):
        raise _Reject(
            "554 5.6.0 Message refused: a line holding only a dot must end in CRLF"
            " and follow a CRLF (SMTP smuggling)",
            "lone dot next to a bare CR or LF (smuggling)",
        )
    if cr != crlf:
        raise _Reject("554 5.6.0 Message refused: bare CR in data", "bare CR in data")
    return _LINE_START_DOT.sub(b"", data)


def _too_big(limit: int) -> _Reject:
    return _Reject(
        "552 5.3.4 Message size exceeds fixed maximum message size",
        f"message larger than {limit} bytes",
    )


class SMTPListener:
    """The `gateway serve` component "smtp"."""

    name = "smtp"

    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        self.settings = rt.settings.smtp
        self.handler = GatewayHandler(self)
        self.sessions: set[GatewaySMTP] = set()
        self.per_peer: Counter[str | None] = Counter()
        self.inflight: set[asyncio.Task] = set()
        self.closing = False
        self.session_ids = count(1)
        # Message bytes held by all sessions (and their ingests) at once.
        self.budget = self.settings.buffer_budget
        self.buffered = 0
        self.server: asyncio.base_events.Server | None = None
        self._port: int | None = None
        self.tls_context = self._tls_context()

    def _tls_context(self) -> ssl.SSLContext | None:
        s = self.settings
        if s.tls_cert is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(s.tls_cert), str(s.tls_key))
        return ctx

    @property
    def port(self) -> int:
        """The port actually bound (the config may say 0)."""
        assert self._port is not None, "not started"
        return self._port

    def _protocol(self) -> GatewaySMTP:
        s = self.settings
        return GatewaySMTP(
            self.handler,
            self,
            data_size_limit=None,
            enable_SMTPUTF8=True,
            hostname=s.hostname,
            ident="gateway ESMTP",
            tls_context=self.tls_context,
            require_starttls=s.require_tls,
            timeout=s.timeout,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.closing = False
        self.server = await loop.create_server(
            self._protocol, host=self.settings.host, port=self.settings.port, reuse_address=True
        )
        self._port = self.server.sockets[0].getsockname()[1]
        log.info("smtp.listening", host=self.settings.host, port=self.port, tls=self.tls_context is not None)

    # --- sessions -------------------------------------------------------------------

    def admit(self, session: GatewaySMTP, peer: str | None) -> str | None:
        """Count a new connection; the reason to refuse it, or None."""
        self.sessions.add(session)
        self.per_peer[peer] += 1
        session._peer_key = peer
        SMTP_SESSIONS.set(len(self.sessions))
        if len(self.sessions) > self.settings.max_connections:
            return "Too many connections"
        if self.per_peer[peer] > self.settings.max_connections_per_peer:
            return "Too many connections from your address"
        return None

    def release(self, session: GatewaySMTP) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            peer = session._peer_key
            self.per_peer[peer] -= 1
            if self.per_peer[peer] <= 0:
                del self.per_peer[peer]
            SMTP_SESSIONS.set(len(self.sessions))
            if not session.refusal:
                session.log.info("smtp.disconnected", messages=session.messages)

    def reserve(self, n: int) -> bool:
        if self.buffered + n > self.budget:
            return False
        self.buffered += n
        SMTP_BUFFERED_BYTES.set(self.buffered)
        return True

    def unreserve(self, n: int) -> None:
        if n:
            self.buffered -= n
            SMTP_BUFFERED_BYTES.set(self.buffered)

    async def ingest(self, raw: bytes, envelope: Envelope, *, held: int = 0) -> IngestResult:
        """Run one ingest shielded from the session: a peer hanging up mid-commit
        must not cancel a transaction half-way (it is finished, and a retry is
        deduplicated); stop() waits for these before the engine is closed. The
        ``held`` bytes of the memory budget are given back when it ends, not
        when the session does."""
        task = asyncio.ensure_future(self.rt.ingestor.ingest(raw, "smtp", envelope))
        self.inflight.add(task)
        task.add_done_callback(lambda t: self._ingest_done(t, held))
        return await asyncio.shield(task)

    def _ingest_done(self, task: asyncio.Task, held: int) -> None:
        self.unreserve(held)
        self.inflight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the session (if still there) reported it

    # --- stopping -------------------------------------------------------------------

    async def stop(self, timeout: float) -> None:
        """Stop accepting; let messages in flight finish within ``timeout``; 421 the rest."""
        self.closing = True
        if self.server is not None:
            self.server.close()
        for s in list(self.sessions):
            if not s.busy:
                s.close_for_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(s.busy for s in self.sessions) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for s in list(self.sessions):
            s.close_for_shutdown()
        if self.inflight:
            # Commits started before the deadline are let finish (bounded again),
            # so the engine is never disposed under a transaction.
            _, pending = await asyncio.wait(set(self.inflight), timeout=max(deadline - loop.time(), 5.0))
            for t in pending:
                t.cancel()
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.wait_closed(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
        log.info("smtp.stopped")
