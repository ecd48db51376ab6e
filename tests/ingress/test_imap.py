"""The IMAP poller against a real Dovecot on loopback.

Every test has a mailbox of its own on one Dovecot per module; mail is put there
with APPEND from a second connection, as a supplier's mail would arrive.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from gateway.config import IMAPSettings
from gateway.errors import StorageUnavailable
from gateway.ingress.imap import IMAPPollers, MailboxPoller, _by_bytes, backoff_delay, check_account
from gateway.ingress.imap_auth import IMAPSecretError, read_secret, xoauth2_string
from gateway.ingress.imap_client import IMAPConnection, _uid_set, quote_mailbox, search_uids
from tests.ingress.conftest_imap import (  # noqa: F401 - fixtures
    PASSWORD,
    Gateway,
    Mailbox,
    account,
    dovecot,
    eventually,
    imap_user,
    mailbox_row,
    make_mail,
)


def metric(account_name: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("gateway_imap_messages_total", {"account": account_name, "outcome": outcome}) or 0.0


def settings_for(make_settings, db_url, *accounts):
    return make_settings(db_url, imap=list(accounts))


# --- exactly once ------------------------------------------------------------------------


async def test_mail_is_ingested_once_and_restart_takes_nothing_twice(dovecot, imap_user, make_settings, db_url):
    box = Mailbox(dovecot, imap_user)
    await box.append(*[make_mail(f"Invoice {i}") for i in range(5)])
    acct = account(dovecot, imap_user, batch_size=2)
    async with Gateway(settings_for(make_settings, db_url, acct)) as gw:
        await gw.start_pollers()
        await eventually(lambda: _eq(gw.uploads, 5))
        await eventually(lambda: _all_flagged(box, "\\Seen", 5))
        await gw.stop_pollers()
        row = await mailbox_row(gw.rt, acct["name"])
        assert row.last_uid == 5 and row.uidvalidity
        # A second run (a restart) finds nothing new: no fetch, no duplicate.
        before = metric(acct["name"], "duplicate")
        await gw.start_pollers()
        await eventually(lambda: _synced(gw.poller(acct["name"])))
        await box.append(make_mail("Invoice 6"))
        await eventually(lambda: _eq(gw.uploads, 6))
        assert await gw.emails() == 6
        assert metric(acct["name"], "duplicate") == before


async def test_crash_between_commit_and_action_refetches_as_duplicate(dovecot, imap_user, make_settings, db_url, monkeypatch):
    box = Mailbox(dovecot, imap_user)
    await box.append(make_mail("Invoice A"))
    acct = account(dovecot, imap_user)
    async with Gateway(settings_for(make_settings, db_url, acct)) as gw:
        # The process "dies" right after the commit: the action step never returns
        # and the poller is cancelled there.
        reached = asyncio.Event()

        async def hang(self, conn, uids):
            reached.set()
            await asyncio.Event().wait()

        monkeypatch.setattr(MailboxPoller, "apply_after", hang)
        await gw.start_pollers()
        await asyncio.wait_for(reached.wait(), 30)
        await gw.stop_pollers(timeout=0.1)
        assert await gw.uploads() == 1
        assert (await box.flags()) == {1: set()}  # action not applied
        row = await mailbox_row(gw.rt, acct["name"])
        assert row.last_uid == 0  # not advanced past an action that did not happen

        monkeypatch.undo()
        dup = metric(acct["name"], "duplicate")
        await gw.start_pollers()
        await eventually(lambda: _all_flagged(box, "\\Seen", 1))
        assert metric(acct["name"], "duplicate") == dup + 1
        assert await gw.uploads() == 1 and await gw.emails() == 1
        await eventually(lambda: _last_uid(gw.rt, acct["name"], 1))


async def _eq(fn, n):
    return (await fn()) == n


async def _synced(poller):
    return poller.synced.is_set()


async def _last_uid(rt, name, n):
    row = await mailbox_row(rt, name)
    return row is not None and row.last_uid == n


async def _all_flagged(box: Mailbox, flag: str, n: int, folder: str = "INBOX"):
    flags = await box.flags(folder)
    return len(flags) == n and all(flag in f for f in flags.values())


# --- IDLE --------------------------------------------------------------------------------


async def test_new_mail_while_idle_is_ingested_at_once(dovecot, imap_user, make_settings, sqlite_url):
    box = Mailbox(dovecot, imap_user)
    # Polling would take an hour: only the server's IDLE push can bring the mail in.
    acct = account(dovecot, imap_user, poll_interval=3600)
    async with Gateway(settings_for(make_settings, sqlite_url, acct)) as gw:
        await gw.start_pollers()
        poller = gw.poller(acct["name"])
        await asyncio.wait_for(poller.idling.wait(), 30)
        woke = []

        async def watch():
            while poller.idling.is_set():
                await asyncio.sleep(0.005)
            woke.append(time.monotonic())

        watcher = asyncio.create_task(watch())
        sent = time.monotonic()
        await box.append(make_mail("Pushed invoice"))
        await eventually(lambda: _eq(gw.uploads, 1), timeout=20, interval=0.01)
        latency = time.monotonic() - sent
        await watcher
        print(f"APPEND to IDLE wake-up: {(woke[0] - sent) * 1000:.0f} ms; to committed upload: {latency * 1000:.0f} ms")
        # The brief asks for "within a second"; the bound here is looser so a
        # loaded CI machine does not flake, and the printed number is the measure.
        assert latency < 10
        await eventually(lambda: _all_flagged(box, "\\Seen", 1))


async def test_polling_when_idle_is_off(dovecot, imap_user, make_settings, sqlite_url):
    box = Mailbox(dovecot, imap_user)
    acct = account(dovecot, imap_user, idle=False, poll_interval=0.5)
    async with Gateway(settings_for(make_settings, sqlite_url, acct)) as gw:
        await gw.start_pollers()
        poller = gw.poller(acct["name"])
        await eventually(lambda: _synced(poller))
        await box.append(make_mail("Polled invoice"))
        await eventually(lambda: _eq(gw.uploads, 1))
        assert not poller.idling.is_set()


# --- after actions -------------------------------------------------------------------------


@pytest.mark.parametrize("after", ["seen", "delete", "move:Processed Mail", "flag:$Invoiced"])
async def test_after_action(dovecot, imap_user, make_settings, sqlite_url, after):
    box = Mailbox(dovecot, imap_user)
    await box.append(make_mail("One"), make_mail("Two"))
    acct = account(dovecot, imap_user, after=after)
    async with Gateway(settings_for(make_settings, sqlite_url, acct)) as gw:
        await gw.start_pollers()
        await eventually(lambda: _eq(gw.uploads, 2))
        await eventually(lambda: _synced(gw.poller(acct["name"])))
        await gw.stop_pollers()
    inbox = await box.flags()
    if after == "seen":
        assert inbox == {1: {"\\Seen"}, 2: {"\\Seen"}}
    elif after == "delete":
        assert inbox == {}
    elif after.startswith("move:"):
        assert inbox == {}
        # The folder did not exist: it was created on the first move.
        moved = await box.flags("Processed Mail")
        assert len(moved) == 2 and all("\\Seen" not in f for f in moved.values())
    else:
        assert inbox == {1: {"$Invoiced"}, 2: {"$Invoiced"}}


# --- failures: dropped connections, UIDVALIDITY, storage down, wrong password -----------------


async def test_connection_dropped_mid_fetch_loses_and_doubles_nothing(dovecot, imap_user, make_settings, sqlite_url, monkeypatch):
    box = Mailbox(dovecot, imap_user)
    n = 12
    await box.append(*[make_mail(f"Invoice {i}") for i in range(n)])
    acct = account(dovecot, imap_user, batch_size=3)
    drops = []
    real_bodies = IMAPConnection.bodies
    real_ingest = None
    restarts = set()

    async def drop_server():
        # Stop Dovecot (every connection dies); bring it back on the same folder a
        # moment later, while the poller is already retrying.
        await asyncio.to_thread(dovecot.stop)
        drops.append(time.monotonic())

        async def restart():
            await asyncio.sleep(0.5)
            await asyncio.to_thread(dovecot.start_again)

        t = asyncio.ensure_future(restart())
        restarts.add(t)

    fetches = 0

    async def bodies(self, uids):
        nonlocal fetches
        fetches += 1
        if fetches == 2:  # sizes were read; the server goes away as the bodies are fetched
            await drop_server()
        return await real_bodies(self, uids)

    ingests = 0

    async def ingest(raw, source, envelope=None, *, queues=None):
        nonlocal ingests
        ingests += 1
        result = await real_ingest(raw, source, envelope, queues=queues)
        if ingests == 8:  # committed, action not applied yet: the server drops now
            await drop_server()
        return result

    monkeypatch.setattr(IMAPConnection, "bodies", bodies)
    async with Gateway(settings_for(make_settings, sqlite_url, acct)) as gw:
        real_ingest = gw.rt.ingestor.ingest
        monkeypatch.setattr(gw.rt.ingestor, "ingest", ingest)
        await gw.start_pollers()
        await eventually(lambda: _eq(gw.uploads, n), timeout=60)
        await eventually(lambda: _all_flagged(box, "\\Seen", n), timeout=60)
        assert len(drops) == 2
        await asyncio.gather(*restarts)
        assert await gw.uploads() == n and await gw.emails() == n
        # The messages committed before the second drop were fetched again and
        # recognised, not stored twice.
        assert metric(acct["name"], "duplicate") >= 1
        assert metric(acct["name"], "created") == n


async def test_uidvalidity_change_rescans_without_doubling(dovecot, imap_user, make_settings, sqlite_url):
    box = Mailbox(dovecot, imap_user)
    await box.append(make_mail("One"), make_mail("Two"), make_mail("Three"))
    # flag:… leaves the messages in the folder, so the rescan meets them again.
    acct = account(dovecot, imap_user, after="flag:$Done")
    async with Gateway(settings_for(make_settings, sqlite_url, acct)) as gw:
        await gw.start_pollers()
        await eventually(lambda: _last_uid(gw.rt, acct["name"], 3))
        await gw.stop_pollers()
        old = (await mailbox_row(gw.rt, acct["name"])).uidvalidity

        dovecot.stop()
        dovecot.reset_uidvalidity(imap_user)
        dovecot.start_again()
        await box.append(make_mail("Four"))

        dup = metric(acct["name"], "duplicate")
        with capture_logs() as logs:
            await gw.start_pollers()
            await eventually(lambda: _eq(gw.uploads, 4))
            await eventually(lambda: _last_uid(gw.rt, acct["name"], 4))
        row = await mailbox_row(gw.rt, acct["name"])
        assert row.uidvalidity != old
        changed = [e for e in logs if e["event"] == "imap.uidvalidity_changed"]
        assert len(changed) == 1 and changed[0]["old"] == old and changed[0]["new"] == row.uidvalidity
        assert metric(acct["name"], "duplicate") == dup + 3
        assert await gw.emails() == 4


async def test_storage_outage_does_not_advance_and_retries(dovecot, imap_user, make_settings, sqlite_url, monkeypatch):
    box = Mailbox(dovecot, imap_user)
    await box.append(make_mail("One"), make_mail("Two"))
    acct = account(dovecot, imap_user)
    async with Gateway(settings_for(make_settings, sqlite_url, acct)) as gw:
        real = gw.rt.ingestor.ingest
        calls = []

        async def flaky(raw, source, envelope=None, *, queues=None):
            calls.append(envelope.extra["imap_uid"])
            if len(calls) in (2, 3):  # the second message meets a full disk, twice
                raise StorageUnavailable("blob storage unavailable: No space left on device")
            return await real(raw, source, envelope, queues=queues)

        monkeypatch.setattr(gw.rt.ingestor, "ingest", flaky)
        await gw.start_pollers()
        await eventually(lambda: _eq(gw.uploads, 2))
        await eventually(lambda: _all_flagged(box, "\\Seen", 2))
        # uid 1 went through; uid 2 was retried until it could be stored.
        assert calls[:4] == [1, 2, 2, 2]
        assert await gw.emails() == 2


async def test_wrong_password_backs_off_loudly_once_and_others_go_on(dovecot, make_settings, sqlite_url):
    good_user, bad_user = "user39", "user40"
    good, bad = Mailbox(dovecot, good_user), Mailbox(dovecot, bad_user)
    await bad.append(make_mail("Stays"))
    bad_acct = account(dovecot, bad_user, name="wrong-password", password="not-the-password")
    good_acct = account(dovecot, good_user, name="good")
    with capture_logs() as logs:
        async with Gateway(settings_for(make_settings, sqlite_url, bad_acct, good_acct)) as gw:
            await gw.start_pollers()
            await good.append(make_mail("Arrives"))
            await eventually(lambda: _eq(gw.uploads, 1))
            failing = gw.poller("wrong-password")
            await eventually(lambda: _at_least(failing, 3), timeout=60)
            assert failing.status == "failing"
            assert "refused" in failing.last_error and "Authentication failed" in failing.last_error
            assert gw.poller("good").status == "connected"
    failing_lines = [e for e in logs if e["event"] == "imap.failing"]
    errors = [e for e in failing_lines if e["log_level"] == "error"]
    # Three attempts or more, one error line: logged per change of state, not per
    # retry (the retries are debug lines).
    assert len(failing_lines) >= 3
    assert len(errors) == 1 and errors[0]["imap_account"] == "wrong-password"
    assert all(e["log_level"] == "debug" for e in failing_lines if e is not errors[0])
    assert "not-the-password" not in repr(logs)
    assert await _flags_of(bad) == [set()]  # nothing taken from the unreachable mailbox


async def _at_least(poller, n):
    return poller.failures >= n


async def _flags_of(box):
    return list((await box.flags()).values())


# --- TLS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_tls_with_the_servers_certificate(dovecot, imap_user, make_settings, sqlite_url, mode):
    box = Mailbox(dovecot, imap_user)
    await box.append(make_mail(f"Over {mode}"))
    port = dovecot.port if mode == "starttls" else dovecot.tls_port
    acct = account(dovecot, imap_user, tls=mode, port=port, host="localhost", tls_ca_file=str(dovecot.cert))
    async with Gateway(settings_for(make_settings, sqlite_url, acct)) as gw:
        await gw.start_pollers()
        await eventually(lambda: _eq(gw.uploads, 1))
        conn = IMAPConnection(gw.settings.imap[0])
        await conn.open(PASSWORD)
        try:
            assert conn.protocol.transport.get_extra_info("ssl_object") is not None
        finally:
            await conn.close()


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_tls_verification_is_on_by_default(dovecot, imap_user, mode):
    port = dovecot.port if mode == "starttls" else dovecot.tls_port
    # Without tls_ca_file the self-signed certificate is not trusted.
    ok, detail = await check_account(IMAPSettings(**account(dovecot, imap_user, tls=mode, port=port, host="localhost")))
    assert not ok
    assert "certificate" in detail and "not trusted" in detail, detail
    # With verification off it connects (and the operator was told, see the log).
    ok, detail = await check_account(IMAPSettings(**account(dovecot, imap_user, tls=mode, port=port, host="localhost", tls_verify=False)))
    assert ok, detail


# --- too large ------------------------------------------------------------------------------


async def test_too_large_message_is_left_in_place_flagged_and_skipped(dovecot, imap_user, make_settings, sqlite_url):
    box = Mailbox(dovecot, imap_user)
    await box.append(make_mail("Small"), make_mail("Huge", size=8000), make_mail("Small again"))
    acct = account(dovecot, imap_user, max_message_size=4096)
    async with Gateway(settings_for(make_settings, sqlite_url, acct)) as gw:
        with capture_logs() as logs:
            await gw.start_pollers()
            await eventually(lambda: _eq(gw.uploads, 2))
            await eventually(lambda: _last_uid(gw.rt, acct["name"], 3))
        flags = await box.flags()
        assert flags[1] == {"\\Seen"} and flags[3] == {"\\Seen"}
        assert flags[2] == {"$GatewayTooLarge"}  # not seen, not moved: a person looks at it
        large = [e for e in logs if e["event"] == "imap.too_large"]
        assert len(large) == 1 and large[0]["imap_uid"] == 2 and large[0]["size"] > 4096
        assert metric(acct["name"], "too_large") == 1


# --- OAuth2 and secrets ---------------------------------------------------------------------


def test_xoauth2_sasl_string_is_googles_and_microsofts_format():
    s = xoauth2_string("ap@example.com", "ya29.token")
    assert base64.b64decode(s) == b"user=ap@example.com\x01auth=Bearer ya29.token\x01\x01"
    # The example from Google's XOAUTH2 protocol page.
    assert xoauth2_string("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg") == (
        "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
    )
    with pytest.raises(IMAPSecretError):
        xoauth2_string("ap@example.com", "tok\x01user=evil")


async def test_xoauth2_login_against_dovecot(dovecot, imap_user, make_settings, sqlite_url, tmp_path):
    # Dovecot checks the bearer token against its passdb, so the "password" is the token.
    token_file = tmp_path / "token"
    token_file.write_text(PASSWORD + "\n")
    box = Mailbox(dovecot, imap_user)
    await box.append(make_mail("Via OAuth2"))
    acct = account(dovecot, imap_user, auth="xoauth2", password=None, password_command=["cat", str(token_file)])
    async with Gateway(settings_for(make_settings, sqlite_url, acct)) as gw:
        await gw.start_pollers()
        await eventually(lambda: _eq(gw.uploads, 1))
    # A rejected token ends with a clear error, not a hang on the server's challenge.
    bad = IMAPSettings(**account(dovecot, imap_user, auth="xoauth2", password="expired-token"))
    started = time.monotonic()
    ok, detail = await check_account(bad)
    assert not ok and "refused" in detail and "expired-token" not in detail, detail
    assert time.monotonic() - started < 14  # well inside the 15 s command limit


async def test_secret_sources(tmp_path):
    base = {"name": "a", "host": "127.0.0.1", "username": "u", "queue": "q", "tls": "none"}
    f = tmp_path / "pw"
    f.write_text("s3cret\n")
    assert await read_secret(IMAPSettings(**base, password_file=f)) == "s3cret"
    assert await read_secret(IMAPSettings(**base, password_command=["printf", "tok\\n"])) == "tok"
    with pytest.raises(IMAPSecretError, match="cannot be read"):
        await read_secret(IMAPSettings(**base, password_file=tmp_path / "missing"))
    with pytest.raises(IMAPSecretError, match="exited with status 3") as e:
        await read_secret(IMAPSettings(**base, password_command=["sh", "-c", "echo leaked-secret; exit 3"]))
    assert "leaked-secret" not in str(e.value)
    with pytest.raises(IMAPSecretError, match="empty"):
        await read_secret(IMAPSettings(**base, password_command=["true"]))


def test_small_pure_helpers():
    assert _uid_set([7, 1, 2, 3, 9, 10]) == "1:3,7,9:10"
    assert quote_mailbox("Processed Mail") == '"Processed Mail"'
    assert quote_mailbox('a"b') == '"a\\"b"'
    assert quote_mailbox("Eingänge") == '"Eing&AOQ-nge"'  # modified UTF-7 (RFC 3501 5.1.3)
    assert quote_mailbox("R&D") == '"R&-D"'
    sizes = {1: 40, 2: 40, 3: 100, 4: 10, 5: 10}
    assert _by_bytes([1, 2, 3, 4, 5], sizes, 90) == [[1, 2], [3], [4, 5]]  # one may exceed alone
    assert _by_bytes([], sizes, 90) == []
    delays = [backoff_delay(n, 1, 60) for n in range(1, 10)]
    assert all(0.5 * min(60, 2 ** (n - 1)) <= d <= min(60, 2 ** (n - 1)) for n, d in zip(range(1, 10), delays))


def test_search_uids_skip_untagged_data_carrying_sequence_numbers():
    """New mail announced along with a SEARCH answer ("4 EXISTS") must not be
    taken for UID 4."""
    lines = [b"SEARCH 101 102", b"103", b"4 EXISTS", b"1 RECENT", b"2 FETCH (FLAGS (\\Seen))", b"SEARCH", b""]
    assert search_uids(lines) == {101, 102, 103}


# --- gateway check -------------------------------------------------------------------------


def test_gateway_check_reports_counts_or_the_exact_error(dovecot, tmp_path):
    async def fill():
        await Mailbox(dovecot, "user38").append(make_mail("One"), make_mail("Two"))

    asyncio.run(fill())
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[storage]
database_url = "sqlite+aiosqlite:///var/gateway.db"
root = "storage"

[[organizations]]
name = "acme"

[[queues]]
name = "invoices"
organization = "acme"
addresses = ["invoices@ap.example.com"]

[[imap]]
name = "ap-mailbox"
host = "localhost"
port = {dovecot.port}
tls = "starttls"
tls_ca_file = "{dovecot.cert}"
username = "user38"
password = "{PASSWORD}"
queue = "invoices"
after = "move:Processed"

[[imap]]
name = "typo"
host = "127.0.0.1"
port = {dovecot.tls_port}
tls = "implicit"
tls_ca_file = "{dovecot.cert}"
username = "user38"
password = "hunter2-wrong"
queue = "invoices"
""")
    p = subprocess.run([sys.executable, "-m", "gateway", "--config", str(cfg), "check", "--json"],
                       capture_output=True, text=True, timeout=120, env={**os.environ})
    assert p.returncode == 1, (p.stdout, p.stderr)
    rows = {r["name"]: r for r in map(json.loads, p.stdout.splitlines())}
    good, bad = rows["imap.ap-mailbox"], rows["imap.typo"]
    assert good["ok"] and "INBOX: 2 messages, 2 unseen" in good["detail"], good
    assert "'Processed' does not exist yet" in good["detail"]
    assert not bad["ok"] and "[AUTHENTICATIONFAILED] Authentication failed." in bad["detail"], bad
    assert "hunter2-wrong" not in p.stdout + p.stderr


# --- several instances (PostgreSQL) ------------------------------------------------------------


async def test_one_instance_polls_a_mailbox_at_a_time_on_postgresql(dovecot, imap_user, make_settings, db_url):
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite means one process; the advisory lock is PostgreSQL's")
    box = Mailbox(dovecot, imap_user)
    acct = account(dovecot, imap_user, poll_interval=0.5)
    async with Gateway(settings_for(make_settings, db_url, acct)) as gw:
        first = await gw.start_pollers()
        await eventually(lambda: _synced(first.pollers[0]))
        # A second instance (its own pollers and lock connection) stands by.
        second = IMAPPollers(gw.rt, backoff_base=0.2, backoff_cap=1.0)
        await second.start()
        try:
            await eventually(lambda: _status(second.pollers[0], "standby"))
            await box.append(make_mail("Only once"))
            await eventually(lambda: _eq(gw.uploads, 1))
            assert second.pollers[0].status == "standby" and not second.pollers[0].synced.is_set()
            # The first instance goes away: the second takes the mailbox over.
            await gw.stop_pollers()
            await eventually(lambda: _synced(second.pollers[0]))
            await box.append(make_mail("Second"))
            await eventually(lambda: _eq(gw.uploads, 2))
            assert metric(acct["name"], "duplicate") == 0
        finally:
            await second.stop(5)


async def _status(poller, status):
    return poller.status == status


async def test_serve_runs_the_pollers_as_the_imap_component(dovecot, imap_user, make_settings, sqlite_url):
    from gateway.daemon import build_components

    acct = account(dovecot, imap_user)
    async with Gateway(settings_for(make_settings, sqlite_url, acct)) as gw:
        components = build_components(gw.rt)
        imap = [c for c in components if c.name == "imap"]
        assert len(imap) == 1 and isinstance(imap[0], IMAPPollers)
        await imap[0].start()
        # Appended once the poller idles: mail that lands between its last
        # command and the server registering the IDLE is only seen at the
        # server's next IDLE check (Dovecot: 30 s) or our renewal; this test is
        # about the component's wiring, not that window.
        await asyncio.wait_for(imap[0].pollers[0].idling.wait(), 30)
        await Mailbox(dovecot, imap_user).append(make_mail("Served"))
        await eventually(lambda: _eq(gw.uploads, 1))
        await imap[0].stop(5)
        assert imap[0].pollers[0].status == "stopped"


async def test_move_without_the_move_extension_copies_then_expunges(dovecot, imap_user, make_settings, sqlite_url, monkeypatch):
    real = IMAPConnection.has_capability
    monkeypatch.setattr(IMAPConnection, "has_capability", lambda self, name: name != "MOVE" and real(self, name))
    box = Mailbox(dovecot, imap_user)
    await box.append(make_mail("One"), make_mail("Two"))
    acct = account(dovecot, imap_user, after="move:Archive")
    async with Gateway(settings_for(make_settings, sqlite_url, acct)) as gw:
        await gw.start_pollers()
        await eventually(lambda: _last_uid(gw.rt, acct["name"], 2))
        await gw.stop_pollers()
    monkeypatch.undo()
    assert await box.flags() == {}
    archived = await box.flags("Archive")
    # The copies carry no \\Deleted: only the originals were marked and expunged.
    assert len(archived) == 2 and all("\\Deleted" not in f for f in archived.values())


async def test_idle_is_renewed_and_mail_still_arrives(dovecot, imap_user, make_settings, sqlite_url, monkeypatch):
    from gateway.ingress import imap as imap_module

    # The real renewal is every 10 minutes (or poll_interval); shortened here.
    monkeypatch.setattr(imap_module, "IDLE_RENEW_SECONDS", 0.3)
    rounds = []
    real_idle = IMAPConnection.idle

    async def counting_idle(self, seconds, stop, idling=None):
        rounds.append(seconds)
        return await real_idle(self, seconds, stop, idling)

    monkeypatch.setattr(IMAPConnection, "idle", counting_idle)
    box = Mailbox(dovecot, imap_user)
    acct = account(dovecot, imap_user, poll_interval=3600)
    async with Gateway(settings_for(make_settings, sqlite_url, acct)) as gw:
        await gw.start_pollers()
        await eventually(lambda: _len_at_least(rounds, 4))
        assert set(rounds) == {0.3}  # DONE and IDLE again, on one connection
        await box.append(make_mail("After renewals"))
        await eventually(lambda: _eq(gw.uploads, 1))
        assert gw.poller(acct["name"]).failures == 0


async def _len_at_least(items, n):
    return len(items) >= n
