"""IMAP pollers: pull mail from existing mailboxes into ingest(), exactly once.

One ``MailboxPoller`` per ``[[imap]]`` account and folder, each on its own
connection, each in its own task: one failing account never stops the others.

Exactly once, per mailbox:

1. SELECT the folder; a UIDVALIDITY different from the one remembered in
   ``imap_mailboxes`` means the UIDs were renumbered: rescan from UID 1 (ingest's
   deduplication makes the rescan harmless) and log it.
2. ``UID SEARCH`` for UIDs above the last one handled; per batch of ``batch_size``:
   ``UID FETCH (RFC822.SIZE)`` first, so a message over ``max_message_size`` is
   never downloaded (it is flagged ``$GatewayTooLarge``, logged, counted and
   skipped), then ``UID FETCH (BODY.PEEK[])`` (PEEK: \\Seen stays as it is).
3. ``ingest()`` each message: one commit each.
4. Only after the commits, apply the ``after`` action (seen, move, delete, flag).
5. Only after the action, advance ``last_uid``.

A crash anywhere before step 5 re-fetches the messages on restart; ingest answers
``duplicate`` (no second upload) and the action is applied then. Advancing
``last_uid`` only after the action is what makes that true for ``seen`` and
``flag``, which leave the message in the folder: had ``last_uid`` moved first, a
crash before the action would leave the action undone for good.

A ``TemporaryError`` from ingest (storage or database down) stops the batch
where it is: what was committed gets its action and ``last_uid``, the rest is
retried after a backoff. Any connection error leads to a reconnect with
exponential backoff and jitter, logged once per change of state (connected,
failing with a given error, recovered), not once per retry.

On PostgreSQL several gateway instances may run; each mailbox is polled by one
of them at a time, the holder of a session-level advisory lock taken on a
dedicated connection (not one from the pool, which it would occupy for good).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from contextlib import asynccontextmanager
from typing import AsyncIterator

from prometheus_client import Counter, Gauge
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from gateway.config import IMAPSettings, Settings
from gateway.errors import GatewayError, MessageTooLarge, PermanentError, TemporaryError
from gateway.ingest import Envelope
from gateway.ingress.imap_auth import IMAPSecretError, read_secret
from gateway.ingress.imap_client import IMAPConnection, IMAPError, IMAPRefused
from gateway.observability import get_logger
from gateway.storage import models as m
from gateway.storage.db import is_sqlite, transaction

# IDLE is renewed at least this often, well inside RFC 2177's 29-minute limit and
# short enough that a connection silently dropped by a NAT box is noticed.
IDLE_RENEW_SECONDS = 600.0
BACKOFF_BASE = 2.0
BACKOFF_CAP = 300.0
# Most bytes of message bodies fetched with one UID FETCH (one message may exceed it).
FETCH_BYTES = 64 * 1024 * 1024
TOO_LARGE_FLAG = "$GatewayTooLarge"
REJECTED_FLAG = "$GatewayRejected"

IMAP_MESSAGES = Counter(
    "gateway_imap_messages_total",
    "Messages seen by the IMAP pollers, by outcome (created, duplicate, too_large, rejected)",
    ["account", "outcome"],
)
IMAP_CONNECTED = Gauge("gateway_imap_connected", "1 while a mailbox is connected and polled", ["account", "folder"])


def backoff_delay(failures: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Exponential, capped, with jitter so that many pollers hitting one server
    that came back do not reconnect in lockstep."""
    ceiling = min(cap, base * 2 ** max(0, failures - 1))
    return random.uniform(ceiling / 2, ceiling)


def _lock_key(account: str, folder: str) -> int:
    digest = hashlib.sha256(f"gateway-imap\0{account}\0{folder}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _by_bytes(uids: list[int], sizes: dict[int, int], budget: int) -> list[list[int]]:
    """Split ``uids`` (in order) into runs of at most ``budget`` bytes (at least one each)."""
    groups: list[list[int]] = []
    total = budget + 1
    for uid in uids:
        if total + sizes[uid] > budget and (not groups or groups[-1]):
            groups.append([])
            total = 0
        groups[-1].append(uid)
        total += sizes[uid]
    return groups


class MailboxState:
    """The committed position of one mailbox (``imap_mailboxes`` row)."""

    def __init__(self, sessions, account: str, folder: str) -> None:
        self.sessions = sessions
        self.account = account
        self.folder = folder

    async def load(self) -> tuple[int | None, int]:
        async with transaction(self.sessions) as s:
            row = await self._row(s)
            return (row.uidvalidity, row.last_uid) if row else (None, 0)

    async def save(self, uidvalidity: int, last_uid: int) -> None:
        # Two savers can only race on the first insert; the loser's second pass
        # finds the winner's row and updates it.
        for attempt in (1, 2):
            try:
                async with transaction(self.sessions) as s:
                    row = await self._row(s)
                    if row is None:
                        s.add(m.ImapMailbox(account=self.account, folder=self.folder, uidvalidity=uidvalidity, last_uid=last_uid))
                    else:
                        row.uidvalidity = uidvalidity
                        row.last_uid = last_uid
                return
            except IntegrityError:
                if attempt == 2:
                    raise

    async def _row(self, s):
        q = select(m.ImapMailbox).where(m.ImapMailbox.account == self.account, m.ImapMailbox.folder == self.folder)
        return (await s.scalars(q)).one_or_none()


class MailboxPoller:
    def __init__(self, rt, account: IMAPSettings, folder: str, stop: asyncio.Event, *, lock_engine: AsyncEngine | None = None,
                 backoff_base: float = BACKOFF_BASE, backoff_cap: float = BACKOFF_CAP) -> None:
        self.rt = rt
        self.account = account
        self.folder = folder
        self.stop_event = stop
        self.lock_engine = lock_engine
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.state = MailboxState(rt.sessions, account.name, folder)
        self.log = get_logger(imap_account=account.name, imap_folder=folder, queue=account.queue)
        # What the poller is doing, for tests and `status`: starting, connected,
        # failing, standby (another instance holds the mailbox), stopped.
        self.status = "starting"
        self.last_error: str | None = None
        self.failures = 0
        self.idling = asyncio.Event()  # set while an IDLE is acknowledged by the server
        self.synced = asyncio.Event()  # set after every completed sync
        self._status_key: tuple | None = None
        self._lock_conn = None

    # --- state changes, logged once each -----------------------------------------

    def _set_status(self, status: str, error: str | None = None, **kw) -> None:
        key = (status, error)
        self.status, self.last_error = status, error
        IMAP_CONNECTED.labels(self.account.name, self.folder).set(1 if status == "connected" else 0)
        if key == self._status_key:
            self.log.debug(f"imap.{status}", error=error, **kw)  # a retry: no news
            return
        previous, self._status_key = self._status_key, key
        if status == "failing":
            self.log.error("imap.failing", error=error, **kw)
        elif status == "connected" and previous and previous[0] == "failing":
            self.log.info("imap.recovered", **kw)
        else:
            self.log.info(f"imap.{status}", **kw)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stop_event.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # --- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until stopped; never raises (a bug here must not take the daemon down)."""
        while not self.stop_event.is_set():
            try:
                async with self._mailbox_lock() as held:
                    if not held:
                        self._set_status("standby")
                        await self._sleep(self.account.poll_interval)
                        continue
                    await self._session()
            except (IMAPError, IMAPSecretError, TemporaryError) as e:
                await self._failed(str(e))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - unexpected: loud, and retried
                error = f"{type(e).__name__}: {e}"
                if self._status_key != ("failing", error):  # the traceback once, not per retry
                    self.log.exception("imap.error", error=error)
                await self._failed(error)
        self._set_status("stopped")

    async def _failed(self, error: str) -> None:
        self.failures += 1
        delay = backoff_delay(self.failures, self.backoff_base, self.backoff_cap)
        self._set_status("failing", error=error, retry_in=round(delay, 1))
        await self._sleep(delay)

    async def _session(self) -> None:
        conn = IMAPConnection(self.account)
        try:
            secret = await read_secret(self.account)
            await conn.open(secret)
            del secret
            while not self.stop_event.is_set():
                await self.sync(conn)
                # "connected" only after a whole sync: a login that works followed
                # by a sync that fails the same way each time is one failing state,
                # logged once, not a flapping connected/failing pair.
                self._set_status("connected", tls=self.account.tls, idle=conn.has_capability("IDLE") and self.account.idle)
                self.failures = 0
                self.synced.set()
                if self.stop_event.is_set():
                    break
                if self.account.idle and conn.has_capability("IDLE"):
                    # Renewed at least every poll_interval too, which bounds how
                    # late mail can be if a server ever fails to push.
                    await conn.idle(min(IDLE_RENEW_SECONDS, self.account.poll_interval), self.stop_event, self.idling)
                else:
                    await conn.wait(self.account.poll_interval, self.stop_event)
        finally:
            await conn.close()

    # --- one pass over the folder -----------------------------------------------------

    async def sync(self, conn: IMAPConnection) -> None:
        await self._check_lock()
        uidvalidity, _exists = await conn.select(self.folder)
        known_validity, last_uid = await self.state.load()
        if known_validity != uidvalidity:
            if known_validity is not None:
                self.log.warning("imap.uidvalidity_changed", old=known_validity, new=uidvalidity, last_uid=last_uid,
                                 detail="UIDs were renumbered; rescanning the folder, duplicates are recognised")
            last_uid = 0
            await self.state.save(uidvalidity, 0)
        uids = await conn.uids_from(last_uid + 1)
        size = self.account.batch_size
        for i in range(0, len(uids), size):
            if self.stop_event.is_set():
                return
            await self._batch(conn, uidvalidity, uids[i:i + size])

    async def _batch(self, conn: IMAPConnection, uidvalidity: int, uids: list[int]) -> None:
        limit = min(self.account.max_message_size, self.rt.ingestor.max_size)
        sizes = await conn.sizes(uids)
        too_large = [u for u in uids if sizes.get(u, 0) > limit]
        wanted = [u for u in uids if u in sizes and u not in too_large]
        # batch_size bounds the count; this bounds the bytes held in memory at once.
        groups = iter(_by_bytes(wanted, sizes, FETCH_BYTES))
        fetched: set[int] = set()
        bodies: dict[int, bytes] = {}
        ingested: list[int] = []
        handled: list[int] = []  # in UID order, no gaps: last_uid may move to its end
        rejected: list[int] = []  # permanent ingest errors other than size
        pending: GatewayError | None = None
        for uid in uids:
            log = self.log.bind(imap_uid=uid)
            if uid in too_large:
                log.warning("imap.too_large", size=sizes[uid], limit=limit, flag=TOO_LARGE_FLAG)
                IMAP_MESSAGES.labels(self.account.name, "too_large").inc()
            elif uid not in sizes:
                log.info("imap.vanished")  # expunged by someone else since the SEARCH
            else:
                if uid not in fetched:
                    group = next(groups)  # groups are in UID order: this one starts here
                    fetched.update(group)
                    bodies = await conn.bodies(group)
                if uid not in bodies:
                    log.info("imap.vanished")
                    handled.append(uid)
                    continue
                try:
                    result = await self.rt.ingestor.ingest(
                        bodies.pop(uid),
                        "imap",
                        Envelope(
                            peer=conn.where,
                            tls=self.account.tls != "none",
                            extra={"imap_account": self.account.name, "imap_folder": self.folder, "imap_uid": uid},
                        ),
                        queues=[self.account.queue],
                    )
                except TemporaryError as e:
                    pending = e
                    break
                except PermanentError as e:
                    log.error("imap.rejected", error=str(e), flag=TOO_LARGE_FLAG if isinstance(e, MessageTooLarge) else REJECTED_FLAG)
                    IMAP_MESSAGES.labels(self.account.name, "rejected").inc()
                    (too_large if isinstance(e, MessageTooLarge) else rejected).append(uid)
                else:
                    IMAP_MESSAGES.labels(self.account.name, result.status).inc()
                    log.info(f"imap.{result.status}", email_id=result.email_id, upload_id=result.upload_ids[0] if result.uploads else None)
                    ingested.append(uid)
            handled.append(uid)
        # Left in place and flagged, so a person can find them in the mail client.
        if too_large:
            await self._flag(conn, too_large, TOO_LARGE_FLAG)
        if rejected:
            await self._flag(conn, rejected, REJECTED_FLAG)
        if ingested:
            await self.apply_after(conn, ingested)
        if handled:
            await self.state.save(uidvalidity, handled[-1])
        if pending is not None:
            raise pending

    async def _flag(self, conn: IMAPConnection, uids: list[int], flag: str) -> None:
        try:
            await conn.add_flags(uids, flag)
        except IMAPRefused as e:
            # A server without custom keywords: the log line above is the report.
            self.log.warning("imap.flag_refused", flag=flag, error=str(e))

    async def apply_after(self, conn: IMAPConnection, uids: list[int]) -> None:
        """The account's ``after`` action; only ever called after the commit."""
        after = self.account.after
        kind, _, arg = after.partition(":")
        if after == "seen":
            await conn.add_flags(uids, "\\Seen")
        elif after == "delete":
            await conn.add_flags(uids, "\\Deleted")
            await conn.expunge(uids)
        elif kind == "move":
            await conn.move(uids, arg)
        elif kind == "flag":
            await conn.add_flags(uids, arg)
        self.log.debug("imap.after", action=after, uids=len(uids))

    # --- one instance per mailbox (PostgreSQL) ----------------------------------------

    @asynccontextmanager
    async def _mailbox_lock(self) -> AsyncIterator[bool]:
        if self.lock_engine is None:  # SQLite: one process owns the database
            yield True
            return
        try:
            conn = await self.lock_engine.connect()
        except Exception as e:
            raise TemporaryError(f"database unavailable for the mailbox lock: {type(e).__name__}: {e}") from e
        try:
            key = _lock_key(self.account.name, self.folder)
            held = bool((await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})).scalar())
            await conn.commit()
            self._lock_conn = conn if held else None
            try:
                yield held
            finally:
                self._lock_conn = None
                if held:
                    try:
                        await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        await conn.commit()
                    except Exception:  # the session ending releases it anyway
                        pass
        finally:
            try:
                await conn.close()
            except Exception:
                pass

    async def _check_lock(self) -> None:
        # If the lock's connection died, the lock went with it and another
        # instance may take the mailbox: stop and compete for it again.
        if self._lock_conn is None:
            return
        try:
            await self._lock_conn.execute(text("SELECT 1"))
            await self._lock_conn.commit()
        except Exception as e:
            raise TemporaryError(f"lost the mailbox lock's database connection: {type(e).__name__}") from e


class IMAPPollers:
    """The "imap" component of `gateway serve`."""

    name = "imap"

    def __init__(self, rt, *, backoff_base: float = BACKOFF_BASE, backoff_cap: float = BACKOFF_CAP) -> None:
        self.rt = rt
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.pollers: list[MailboxPoller] = []
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()
        self._lock_engine: AsyncEngine | None = None

    async def start(self) -> None:
        """Start every poller and return at once: a mailbox that is down must not
        keep the daemon (and its SMTP listener) from starting."""
        settings: Settings = self.rt.settings
        if not is_sqlite(settings.storage.database_url):
            self._lock_engine = create_async_engine(settings.storage.database_url, poolclass=NullPool)
        for account in settings.imap:
            if not account.tls_verify:
                get_logger(imap_account=account.name).warning("imap.tls_unverified", detail="tls_verify is off: the server is not authenticated")
            for folder in dict.fromkeys(account.folders):
                poller = MailboxPoller(self.rt, account, folder, self._stop, lock_engine=self._lock_engine,
                                       backoff_base=self.backoff_base, backoff_cap=self.backoff_cap)
                self.pollers.append(poller)
                self._tasks.append(asyncio.create_task(poller.run(), name=f"imap:{account.name}:{folder}"))

    async def stop(self, timeout: float) -> None:
        """Let each poller finish the message in hand, then cancel what is left
        (nothing is lost: an uncommitted message is fetched again next time)."""
        self._stop.set()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for t in pending:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._lock_engine is not None:
            await self._lock_engine.dispose()


# --- `gateway check` ---------------------------------------------------------------------


async def check_account(account: IMAPSettings) -> tuple[bool, str]:
    """Log in and count messages in every folder; (ok, what happened)."""
    conn = IMAPConnection(account, timeout=15)
    try:
        secret = await read_secret(account)
        await conn.open(secret)
        del secret
        parts = []
        for folder in dict.fromkeys(account.folders):
            st = await conn.status(folder)
            parts.append(f"{folder}: {st.messages} messages, {st.unseen} unseen")
        kind, _, target = account.after.partition(":")
        if kind == "move":
            try:
                await conn.status(target)
            except IMAPRefused:
                parts.append(f"move target {target!r} does not exist yet (created on first move)")
        return True, f"{account.username}@{conn.where} ({account.tls}): " + "; ".join(parts)
    except (IMAPError, IMAPSecretError) as e:
        return False, str(e)
    finally:
        await conn.close()
