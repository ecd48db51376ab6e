"""One IMAP connection: aioimaplib with the edges the poller needs filed off.

aioimaplib speaks the protocol; this module adds what a daemon needs around it:

- every command races the connection's loss, so a server that goes away turns
  into ``IMAPConnectionLost`` at once instead of a command waiting forever
  (aioimaplib only reports a lost connection through a callback);
- every command has a time limit (some of aioimaplib's have none; a body fetch
  uses its inactivity timer, which restarts with each chunk received);
- STARTTLS (aioimaplib has none) and an XOAUTH2 exchange that ends properly when
  the server answers a bad token with a "+" challenge (Gmail, Microsoft 365);
- responses parsed into plain values (UIDVALIDITY, UIDs, sizes, bodies).

Errors are ``IMAPError`` with a message an operator can act on; the password or
token never appears in one.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass

import aioimaplib
from aioimaplib.aioimaplib import STOP_WAIT_SERVER_PUSH, Command

from gateway.config import IMAPSettings
from gateway.errors import GatewayError
from gateway.ingress.imap_auth import xoauth2_string

COMMAND_TIMEOUT = 30.0

_UIDVALIDITY_RE = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_EXISTS_RE = re.compile(rb"^(\d+) EXISTS")
_FETCH_RE = re.compile(rb"^\d+ FETCH \(")
_UID_RE = re.compile(rb"\bUID (\d+)")
_SIZE_RE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_STATUS_ITEM_RE = re.compile(rb"\b(MESSAGES|UNSEEN|UIDVALIDITY|UIDNEXT) (\d+)")


class IMAPError(GatewayError):
    """The connection failed or the server refused something; the poller reconnects."""


class IMAPConnectionLost(IMAPError):
    pass


class IMAPRefused(IMAPError):
    """The server answered NO or BAD (the connection itself is fine)."""

    def __init__(self, message: str, text: str = "") -> None:
        super().__init__(message)
        self.text = text


class IMAPAuthError(IMAPRefused):
    """Login refused: wrong password, expired token, account disabled."""


class IMAPArgumentError(IMAPError):
    """A mailbox name or flag that cannot be sent safely; nothing was sent."""


# CR or LF would end the command line and let the rest run as a command of its
# own (the stdlib's CVE-2025-15366); the config refuses them too, this is the
# layer that must hold whatever the caller passes.
_LINE_BREAKERS = re.compile(r"[\x00\r\n]")
# RFC 3501 flag: an optional backslash, then an atom (no atom-specials).
_FLAG_RE = re.compile(r"\\?[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+")


def quote_mailbox(name: str) -> str:
    """A mailbox name as an IMAP quoted string, non-ASCII in modified UTF-7 (RFC 3501 5.1.3)."""
    if not name or _LINE_BREAKERS.search(name):
        raise IMAPArgumentError(f"refusing to send mailbox name {name!r}: empty, or contains CR, LF or NUL")
    out, run = [], []

    def flush_run() -> None:
        if run:
            import base64

            b = "".join(run).encode("utf-16-be")
            out.append("&" + base64.b64encode(b).decode().rstrip("=").replace("/", ",") + "-")
            run.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush_run()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush_run()
    return aioimaplib.quoted("".join(out))


def ssl_context(account: IMAPSettings) -> ssl.SSLContext:
    if not account.tls_verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    # With a CA file, trust only that file (a private CA or a self-signed server):
    # create_default_context skips the system store when cafile is given.
    return ssl.create_default_context(cafile=str(account.tls_ca_file) if account.tls_ca_file else None)


class _XOAuth2Command(Command):
    """AUTHENTICATE XOAUTH2 with the initial response (SASL-IR).

    On a bad token the server sends a "+ <base64 JSON error>" challenge and waits for
    an empty line before its NO; without answering, the command would hang."""

    def __init__(self, protocol, sasl: str, timeout: float) -> None:
        super().__init__("AUTHENTICATE", protocol.new_tag(), "XOAUTH2", sasl, loop=protocol.loop, timeout=timeout)
        self._protocol = protocol
        self._challenged = False

    def append_to_resp(self, line, result: str = "Pending") -> None:
        if result == "Pending" and isinstance(line, bytes) and line.startswith(b"+"):
            self._challenged = True
        super().append_to_resp(line, result)

    def flush(self) -> None:
        # aioimaplib calls flush() after every chunk received; answer a challenge once.
        if self._challenged:
            self._challenged = False
            self._protocol.transport.write(b"\r\n")


@dataclass
class FolderStatus:
    messages: int
    unseen: int
    uidvalidity: int | None


class IMAPConnection:
    """A logged-in connection to one account. Use ``await open()``, then commands,
    then ``await close()`` (also after an error)."""

    def __init__(self, account: IMAPSettings, *, timeout: float = COMMAND_TIMEOUT) -> None:
        self.account = account
        self.timeout = timeout
        self.where = f"{account.host}:{account.port}"
        self.client: aioimaplib.IMAP4 | None = None
        self._lost: asyncio.Future | None = None
        self._ssl: ssl.SSLContext | None = None

    # --- plumbing -------------------------------------------------------------

    @property
    def protocol(self):
        return self.client.protocol

    def has_capability(self, name: str) -> bool:
        return self.client is not None and name in self.protocol.capabilities

    async def _call(self, aw, what: str, *, timeout: float | None | bool = True):
        """Run one aioimaplib coroutine; fail fast when the connection drops."""
        limit = self.timeout if timeout is True else (None if timeout is False else timeout)
        task = asyncio.ensure_future(aw)
        try:
            done, _ = await asyncio.wait({task, self._lost}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task not in done:
            task.cancel()
            if self._lost.done():
                raise IMAPConnectionLost(f"connection to {self.where} lost during {what}")
            raise IMAPError(f"{what}: no answer from {self.where} within {limit:.0f} s")
        try:
            return task.result()
        except (asyncio.TimeoutError, aioimaplib.CommandTimeout):
            raise IMAPError(f"{what}: no answer from {self.where} within {self.timeout:.0f} s") from None
        except ssl.SSLCertVerificationError as e:
            raise IMAPError(f"TLS certificate of {self.where} not trusted: {e.verify_message}") from None
        except ssl.SSLError as e:
            raise IMAPError(f"TLS with {self.where} failed: {e.reason or e}") from None
        except aioimaplib.AioImapException as e:
            raise IMAPError(f"{what}: {getattr(e, 'reason', e)}") from None
        except OSError as e:
            raise IMAPError(f"cannot connect to {self.where}: {e.strerror or e}") from None
        except ValueError as e:  # aioimaplib refuses CR/LF/NUL in arguments
            raise IMAPError(f"{what}: {e}") from None

    @staticmethod
    def _text(resp) -> str:
        last = resp.lines[-1] if resp.lines else b""
        return bytes(last).decode("utf-8", "replace").strip()

    def _check(self, resp, what: str):
        if resp.result != "OK":
            text = self._text(resp)
            raise IMAPRefused(f"{what} refused by {self.where}: {resp.result} {text}".rstrip(), text)
        return resp

    # --- connect and log in -----------------------------------------------------

    async def open(self, secret: str) -> None:
        acct = self.account
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()

        def lost(exc) -> None:
            if not self._lost.done():
                self._lost.set_result(exc)

        # Off the loop: building a context reads CA files from disk.
        ctx = await asyncio.to_thread(ssl_context, acct) if acct.tls != "none" else None
        self._ssl = ctx
        if acct.tls != "implicit":
            ctx = None
        self.client = aioimaplib.IMAP4(acct.host, acct.port, timeout=self.timeout, conn_lost_cb=lost, ssl_context=ctx)
        await self._call(self.client.wait_hello_from_server(), "connect", timeout=self.timeout + 1)
        if acct.tls == "starttls":
            await self._starttls()
        if acct.auth == "xoauth2":
            sasl = xoauth2_string(acct.username, secret)
            resp = await self._call(self.protocol.execute(_XOAuth2Command(self.protocol, sasl, self.timeout), scrub=sasl), "AUTHENTICATE XOAUTH2")
        else:
            resp = await self._call(self.client.login(aioimaplib.quoted(acct.username), secret), "LOGIN")
        if resp.result != "OK":
            raise IMAPAuthError(f"login as {acct.username!r} at {self.where} refused: {self._text(resp)}", self._text(resp))
        self.protocol.state = aioimaplib.AUTH
        # Capabilities change after login (MOVE, UIDPLUS, IDLE appear at Dovecot).
        await self._call(self.protocol.capability(), "CAPABILITY")

    async def _starttls(self) -> None:
        if not self.has_capability("STARTTLS"):
            # Never fall back to cleartext: that is what STARTTLS stripping relies on.
            raise IMAPError(f"{self.where} does not offer STARTTLS")
        proto = self.protocol
        resp = await self._call(proto.execute(Command("STARTTLS", proto.new_tag(), loop=proto.loop)), "STARTTLS")
        self._check(resp, "STARTTLS")
        loop = asyncio.get_running_loop()
        transport = await self._call(
            loop.start_tls(proto.transport, proto, self._ssl, server_hostname=self.account.host),
            "TLS handshake",
        )
        proto.transport = transport
        # RFC 3501 6.2.1: capabilities learned before TLS must be discarded.
        await self._call(proto.capability(), "CAPABILITY")

    async def close(self) -> None:
        if self.client is None:
            return
        try:
            if self._lost is not None and not self._lost.done() and self.protocol.state in (aioimaplib.AUTH, aioimaplib.SELECTED):
                await self._call(self.client.logout(), "LOGOUT", timeout=5)
        except (IMAPError, asyncio.CancelledError):
            pass
        finally:
            # A connect that timed out may still be in progress: stop it, or it
            # would open a connection nobody closes.
            if not self.client._client_task.done():
                self.client._client_task.cancel()
            transport = self.protocol.transport
            if transport is not None:
                transport.close()
            self.client = None

    # --- mailbox commands -------------------------------------------------------------

    async def select(self, folder: str) -> tuple[int, int]:
        """SELECT ``folder``; return (UIDVALIDITY, EXISTS)."""
        resp = self._check(await self._call(self.client.select(quote_mailbox(folder)), f"SELECT {folder}"), f"SELECT {folder}")
        uidvalidity = exists = None
        for line in resp.lines:
            if not isinstance(line, bytes):
                continue
            if m := _UIDVALIDITY_RE.search(line):
                uidvalidity = int(m.group(1))
            if m := _EXISTS_RE.match(line):
                exists = int(m.group(1))
        if uidvalidity is None:
            raise IMAPError(f"SELECT {folder}: {self.where} sent no UIDVALIDITY")
        return uidvalidity, exists or 0

    async def status(self, folder: str) -> FolderStatus:
        resp = await self._call(self.client.status(quote_mailbox(folder), "(MESSAGES UNSEEN UIDVALIDITY)"), f"STATUS {folder}")
        self._check(resp, f"STATUS {folder}")
        items: dict[bytes, int] = {}
        for line in resp.lines[:-1]:
            if isinstance(line, bytes):
                items.update({k: int(v) for k, v in _STATUS_ITEM_RE.findall(line)})
        return FolderStatus(items.get(b"MESSAGES", 0), items.get(b"UNSEEN", 0), items.get(b"UIDVALIDITY"))

    async def uids_from(self, first_uid: int) -> list[int]:
        """UIDs >= first_uid, ascending."""
        resp = await self._call(self.protocol.search("UID", f"{first_uid}:*", charset=None, by_uid=True), "UID SEARCH")
        self._check(resp, "UID SEARCH")
        # "n:*" always matches the highest UID, even when it is below n.
        return sorted(u for u in search_uids(resp.lines[:-1]) if u >= first_uid)

    def _fetch_items(self, resp) -> dict[int, tuple[bytes, bytes | None]]:
        """uid -> (the response's non-literal text, its literal)."""
        out: dict[int, tuple[bytes, bytes | None]] = {}
        text, literal = None, None

        def done() -> None:
            if text is not None and (m := _UID_RE.search(text)):
                out[int(m.group(1))] = (text, literal)

        for item in resp.lines[:-1]:  # the last line is the tagged status text
            if isinstance(item, bytearray):
                literal = bytes(item)
            elif _FETCH_RE.match(item):
                done()
                text, literal = item, None
            elif text is not None:
                text += b" " + item
        done()
        return out

    async def sizes(self, uids: list[int]) -> dict[int, int]:
        if not uids:
            return {}
        resp = await self._call(self.protocol.fetch(_uid_set(uids), "(UID RFC822.SIZE)", by_uid=True, timeout=self.timeout), "UID FETCH RFC822.SIZE", timeout=False)
        self._check(resp, "UID FETCH RFC822.SIZE")
        out = {}
        for uid, (text, _) in self._fetch_items(resp).items():
            if m := _SIZE_RE.search(text):
                out[uid] = int(m.group(1))
        return out

    async def bodies(self, uids: list[int]) -> dict[int, bytes]:
        """The raw messages; BODY.PEEK[] leaves \\Seen alone until ingest committed."""
        # No overall limit: a large batch takes as long as it takes, while the
        # command's own inactivity timer (restarted per chunk) catches a stall.
        resp = await self._call(self.protocol.fetch(_uid_set(uids), "(UID BODY.PEEK[])", by_uid=True, timeout=self.timeout), "UID FETCH BODY.PEEK[]", timeout=False)
        self._check(resp, "UID FETCH BODY.PEEK[]")
        return {uid: lit for uid, (_, lit) in self._fetch_items(resp).items() if lit is not None}

    async def add_flags(self, uids: list[int], flags: str) -> None:
        bad = [f for f in flags.split(" ") if not _FLAG_RE.fullmatch(f)]
        if bad:
            raise IMAPArgumentError(f"refusing to send flag {bad[0]!r}: not an IMAP flag")
        resp = await self._call(self.protocol.store(_uid_set(uids), "+FLAGS.SILENT", f"({flags})", by_uid=True), f"UID STORE +FLAGS ({flags})")
        self._check(resp, f"UID STORE +FLAGS ({flags})")

    async def expunge(self, uids: list[int]) -> None:
        if self.has_capability("UIDPLUS"):
            resp = await self._call(self.protocol.expunge(_uid_set(uids), by_uid=True), "UID EXPUNGE")
        else:
            # Without UIDPLUS, EXPUNGE also removes what others marked \Deleted.
            resp = await self._call(self.protocol.expunge(), "EXPUNGE")
        self._check(resp, "EXPUNGE")

    async def move(self, uids: list[int], target: str) -> None:
        what = f"UID MOVE to {target}"
        for attempt in (1, 2):
            try:
                if self.has_capability("MOVE"):
                    resp = await self._call(self.protocol.move(_uid_set(uids), quote_mailbox(target), by_uid=True), what)
                    self._check(resp, what)
                else:
                    resp = await self._call(self.protocol.copy(_uid_set(uids), quote_mailbox(target), by_uid=True), f"UID COPY to {target}")
                    self._check(resp, f"UID COPY to {target}")
                    await self.add_flags(uids, "\\Deleted")
                    await self.expunge(uids)
                return
            except IMAPRefused as e:
                # The target folder does not exist yet: create it once, as a mail
                # client's "move to" would.
                if attempt == 1 and "TRYCREATE" in e.text:
                    resp = await self._call(self.client.create(quote_mailbox(target)), f"CREATE {target}")
                    self._check(resp, f"CREATE {target}")
                    continue
                raise

    async def append(self, raw: bytes, folder: str = "INBOX") -> None:
        """APPEND a message (tests and tools)."""
        resp = await self._call(self.client.append(raw, quote_mailbox(folder)), f"APPEND {folder}")
        self._check(resp, f"APPEND {folder}")

    # --- waiting for mail -------------------------------------------------------------

    async def idle(self, seconds: float, stop: asyncio.Event, idling: asyncio.Event | None = None) -> bool:
        """IDLE until the server announces new mail (True), or ``seconds`` pass or
        ``stop`` is set (False). The caller renews by calling again."""
        queue = self.protocol.idle_queue
        while not queue.empty():  # pushes from an earlier IDLE: a sync followed them
            queue.get_nowait()
        idle_task = await self._call(self.client.idle_start(timeout=seconds + 60), "IDLE")
        if idling is not None:
            idling.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        changed = False
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({get, stopper, self._lost}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    if self._lost.done():
                        raise IMAPConnectionLost(f"connection to {self.where} lost during IDLE")
                    continue
                lines = get.result()
                if lines == STOP_WAIT_SERVER_PUSH:
                    break
                if any(isinstance(line, bytes) and _EXISTS_RE.match(line) for line in lines):
                    changed = True
                    break
        finally:
            stopper.cancel()
            if idling is not None:
                idling.clear()
        self.client.idle_done()
        resp = await self._call(idle_task, "IDLE DONE")
        self._check(resp, "IDLE")
        return changed

    async def wait(self, seconds: float, stop: asyncio.Event) -> None:
        """Sleep between polls, waking early on stop or when the server hangs up."""
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({stopper, self._lost}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if self._lost.done():
            raise IMAPConnectionLost(f"connection to {self.where} lost while waiting")
        # A poll's NOOP keeps NAT and server idle timers from closing the connection.
        if not stop.is_set():
            self._check(await self._call(self.client.noop(), "NOOP"), "NOOP")


def search_uids(lines) -> set[int]:
    """The UIDs in a SEARCH response's untagged lines. aioimaplib may or may not
    strip the "SEARCH" word; other untagged data the server sends along ("3
    EXISTS", "1 RECENT", "2 FETCH (FLAGS ...)") carries sequence numbers, not
    UIDs, and is skipped."""
    uids: set[int] = set()
    for line in lines:
        if not isinstance(line, bytes):
            continue
        tokens = line.split()
        if tokens[:1] == [b"SEARCH"]:
            tokens = tokens[1:]
        if tokens and all(t.isdigit() for t in tokens):
            uids.update(int(t) for t in tokens)
    return uids


def _uid_set(uids: list[int]) -> str:
    """Compact sequence set: 1,2,3,7 -> "1:3,7"."""
    parts, start, prev = [], None, None
    for u in sorted(uids):
        if start is None:
            start = prev = u
        elif u == prev + 1:
            prev = u
        else:
            parts.append(f"{start}:{prev}" if start != prev else str(start))
            start = prev = u
    if start is not None:
        parts.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(parts)
