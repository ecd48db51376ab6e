"""Fixtures for the IMAP tests: a real Dovecot on loopback, mailbox helpers.

Imported by ``test_imap.py`` (``tests/ingress/conftest.py`` belongs to the SMTP
tests). One Dovecot per test module, with many users: each test takes a user of
its own, so tests never see each other's mail. Tests that stop and start the
server (a dropped connection, a UIDVALIDITY change) restart that same instance
on the same folder, as the tool's README describes.
"""

from __future__ import annotations

import asyncio
import imaplib
import itertools
import os
import signal
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.config import IMAPSettings
from gateway.ingress.imap import IMAPPollers
from gateway.ingress.imap_client import IMAPConnection
from gateway.runtime import open_runtime
from gateway.storage import models as m
from tests.conftest import free_port

TOOL = Path(__file__).resolve().parents[3] / "shared" / "tools" / "dovecot-test-server"
PASSWORD = "secret"
USERS = [f"user{i:02d}" for i in range(1, 41)]


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@dataclass
class Dovecot:
    dir: Path
    port: int
    tls_port: int

    @property
    def cert(self) -> Path:
        return self.dir / "cert.pem"

    @property
    def conf(self) -> Path:
        return self.dir / "dovecot.conf"

    def stop(self) -> None:
        # Stopping the master leaves logged-in imap processes serving their
        # clients; a dropped connection needs them gone too. They are children
        # of this test's own master process.
        sessions = self._sessions()
        subprocess.run([str(TOOL), "stop", str(self.dir)], capture_output=True, timeout=30)
        end = time.monotonic() + 15
        while (self._master_alive() or _port_open(self.port) or _port_open(self.tls_port)) and time.monotonic() < end:
            time.sleep(0.05)
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def _sessions(self) -> list[int]:
        try:
            master = int((self.dir / "run" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                name = stat.read_text().split("(", 1)[1].rsplit(")", 1)[0]
            except (OSError, IndexError):
                continue
            if int(fields[1]) == master and name == "imap":
                pids.append(int(stat.parent.name))
        return pids

    def _master_alive(self) -> bool:
        try:
            pid = int((self.dir / "run" / "master.pid").read_text().split()[0])
            os.kill(pid, 0)
            return True
        except (OSError, ValueError, IndexError):
            return False

    def start_again(self) -> None:
        """Start on the same folder and config (mail, UIDs and UIDVALIDITY kept)."""
        end = time.monotonic() + 20
        # The old master may still be on its way out (pid file, sockets): retry.
        while subprocess.run(["dovecot", "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30).returncode != 0:
            if self._master_alive() and _port_open(self.port):
                break  # it is up (an earlier start won)
            if time.monotonic() > end:
                raise RuntimeError(f"dovecot did not start again; see {self.dir}/dovecot.log")
            time.sleep(0.1)
        while not _port_open(self.port):
            if time.monotonic() > end:
                raise RuntimeError(f"dovecot did not come back; see {self.dir}/dovecot.log")
            time.sleep(0.05)
        if (self.dir / "dovecot.conf").read_text().count("anvil-auth-penalty"):
            self.warm_up()

    def warm_up(self) -> None:
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        try:
            imap.login(USERS[-1], PASSWORD)
        finally:
            imap.logout()

    def reset_uidvalidity(self, user: str) -> None:
        """The README's recipe: drop Dovecot's index and UID list, keep the messages.
        Call while stopped."""
        for p in (self.dir / "mail" / user).rglob("dovecot*"):
            p.unlink() if p.is_file() else shutil.rmtree(p)
        # UIDVALIDITY is a timestamp: make sure the new one differs.
        time.sleep(1.1)


def start_dovecot(base: Path) -> Dovecot:
    d = base / "dovecot"
    port, tls_port = free_port(), free_port()
    users = [a for u in USERS for a in ("--user", f"{u}:{PASSWORD}")]
    # Dovecot's master process keeps the stderr it was started with: a pipe there
    # would never reach EOF and subprocess.run would wait forever. A file it is.
    d.parent.mkdir(parents=True, exist_ok=True)
    with open(base / "dovecot-start.log", "w+") as err:
        p = subprocess.run([str(TOOL), "start", str(d), str(port), "--tls-port", str(tls_port), *users],
                           stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True, timeout=300)
        if p.returncode != 0:
            err.seek(0)
            pytest.fail(f"dovecot-test-server failed: {p.stdout}{err.read()}")
    assert "ready" in p.stdout, p.stdout
    server = Dovecot(d, port, tls_port)
    # Also offer XOAUTH2/OAUTHBEARER: Dovecot 2.3 checks the bearer token against
    # the passdb as if it were the password, so a static token needs no OAuth server.
    server.stop()
    conf = server.conf.read_text()
    conf = conf.replace("auth_mechanisms = plain login\n", "auth_mechanisms = plain login xoauth2 oauthbearer\n")
    # Tests fail logins on purpose; Dovecot's per-IP auth penalty would then slow
    # every later login from 127.0.0.1 (other tests' mailboxes) by up to 15 s.
    # Dovecot's documented switch: no anvil-auth-penalty socket, no penalty.
    conf = conf.replace("service anvil {\n  chroot =\n}",
                        "service anvil {\n  chroot =\n  unix_listener anvil-auth-penalty {\n    mode = 0\n  }\n}")
    # (Its price: the auth process spends ~5 s failing to reach that socket on its
    # first login; pay it here, once, rather than inside a test.)
    conf += "auth_failure_delay = 0\n"
    server.conf.write_text(conf)
    server.start_again()
    return server


@pytest.fixture(scope="module")
def dovecot():
    if shutil.which("dovecot") is None and not TOOL.exists():
        pytest.skip("dovecot-test-server not available")
    # Not under pytest's basetemp: pytest resets /tmp/pytest-of-<user> to 0700
    # whenever any session starts, and Dovecot's unprivileged auth process must
    # be able to reach the passwd file.
    base = Path(tempfile.mkdtemp(prefix="gateway-imap-test-"))
    try:
        server = start_dovecot(base)
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
