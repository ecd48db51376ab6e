"""Fixtures for the IMAP tests: a real Dovecot on loopback, mailbox helpers.

Imported by ``test_imap.py`` (``tests/ingress/conftest.py`` belongs to the SMTP
tests). One Dovecot per test module, with many users: each test takes a user of
its own, so tests never see each other's mail. Tests that stop and start the
server (a dropped connection, a UIDVALIDITY change) restart that same instance
on the same folder (``tests/peers/dovecot.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import tempfile
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.config import IMAPSettings
from gateway.ingress.imap import IMAPPollers
from gateway.ingress.imap_client import IMAPConnection
from gateway.runtime import open_runtime
from gateway.storage import models as m
from tests.peers import dovecot as dovecot_peer
from tests.peers.dovecot import Dovecot

PASSWORD = "secret"
USERS = [f"user{i:02d}" for i in range(1, 41)]


@pytest.fixture(scope="module")
def dovecot():
    if reason := dovecot_peer.missing():
        pytest.skip(reason)
    # Not under pytest's basetemp: pytest resets /tmp/pytest-of-<user> to 0700
    # whenever any session starts, and Dovecot's unprivileged auth process must
    # be able to reach the passwd file.
    base = Path(tempfile.mkdtemp(prefix="gateway-imap-test-"))
    try:
        try:
            server = Dovecot.create(base / "dovecot", {u: PASSWORD for u in USERS})
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            pytest.fail(f"test Dovecot did not start: {e}")
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


_user_counter = itertools.count()


@pytest.fixture
def imap_user(dovecot):
    """A mailbox of this test's own on the module's server."""
    i = next(_user_counter)
    if i >= len(USERS):
        pytest.fail("out of Dovecot users; add more to USERS")
    return USERS[i]


def account(dovecot: Dovecot, user: str, **over) -> dict:
    """An [[imap]] table for ``user`` (plain IMAP on loopback unless overridden)."""
    acct = {
        "name": f"acct-{user}",
        "host": "127.0.0.1",
        "port": dovecot.port,
        "tls": "none",
        "username": user,
        "password": PASSWORD,
        "queue": "invoices",
        "poll_interval": 30,
    }
    acct.update(over)
    return acct


def make_mail(subject: str = "Invoice", *, msgid: str | None = None, body: str = "Invoice attached.", size: int = 0) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Supplier <billing@supplier.example>"
    msg["To"] = "ap@example.com"
    msg["Subject"] = subject
    msg["Message-ID"] = msgid or f"<{uuid.uuid4().hex}@supplier.example>"
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
    msg.set_content(body + ("\n" + "x" * 76) * (size // 77))
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


class Mailbox:
    """A second client, as a user's mail program would be: APPEND, look at flags."""

    def __init__(self, dovecot: Dovecot, user: str) -> None:
        self.settings = IMAPSettings(**account(dovecot, user))

    async def _conn(self) -> IMAPConnection:
        conn = IMAPConnection(self.settings, timeout=15)
        await conn.open(PASSWORD)
        return conn

    async def append(self, *raws: bytes, folder: str = "INBOX") -> None:
        conn = await self._conn()
        try:
            for raw in raws:
                await conn.append(raw, folder)
        finally:
            await conn.close()

    async def flags(self, folder: str = "INBOX") -> dict[int, set[str]]:
        """uid -> flags; {} when the folder is empty or does not exist."""
        conn = await self._conn()
        try:
            try:
                _, exists = await conn.select(folder)
            except Exception:
                return {}
            if not exists:
                return {}
            resp = await conn._call(conn.protocol.fetch("1:*", "(UID FLAGS)", by_uid=True, timeout=15), "FETCH FLAGS")
            out = {}
            for line in resp.lines[:-1]:
                if isinstance(line, bytes) and b"FETCH" in line:
                    text = line.decode()
                    uid = int(text.split("UID ")[1].split()[0].rstrip(")"))
                    flags = text.split("FLAGS (")[1].split(")")[0].split()
                    out[uid] = set(flags) - {"\\Recent"}  # session-specific, not state
            return out
        finally:
            await conn.close()


async def eventually(pred, timeout: float = 30.0, interval: float = 0.05):
    """Wait until ``await pred()`` is truthy; fail with the last value otherwise."""
    end = asyncio.get_running_loop().time() + timeout
    while True:
        value = await pred()
        if value:
            return value
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")
        await asyncio.sleep(interval)


async def count(rt, model) -> int:
    async with rt.sessions() as s:
        return await s.scalar(select(func.count()).select_from(model))


async def mailbox_row(rt, acct: str, folder: str = "INBOX"):
    async with rt.sessions() as s:
        return (await s.scalars(select(m.ImapMailbox).where(m.ImapMailbox.account == acct, m.ImapMailbox.folder == folder))).one_or_none()


class Gateway:
    """An open runtime plus IMAP pollers that can be started and stopped again."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.rt = None
        self.pollers: IMAPPollers | None = None
        self._cm = None

    async def __aenter__(self):
        self._cm = open_runtime(self.settings, migrate=True)
        self.rt = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc):
        await self.stop_pollers()
        await self._cm.__aexit__(*exc)

    async def start_pollers(self) -> IMAPPollers:
        self.pollers = IMAPPollers(self.rt, backoff_base=0.2, backoff_cap=1.0)
        await self.pollers.start()
        return self.pollers

    async def stop_pollers(self, timeout: float = 10) -> None:
        if self.pollers is not None:
            await self.pollers.stop(timeout)
            self.pollers = None

    def poller(self, account_name: str):
        return next(p for p in self.pollers.pollers if p.account.name == account_name)

    async def uploads(self) -> int:
        return await count(self.rt, m.Upload)

    async def emails(self) -> int:
        return await count(self.rt, m.Email)


__all__ = ["dovecot", "imap_user", "account", "make_mail", "Mailbox", "eventually", "count", "mailbox_row", "Gateway", "Dovecot", "PASSWORD"]
