"""The SMTP listener against real clients (smtplib, raw sockets) on a real socket,
on SQLite and PostgreSQL. What a sending MTA sees is the design's SMTP table."""

from __future__ import annotations

import asyncio
import os
import shutil
import smtplib
import sqlite3
import ssl
import threading

import asyncpg
import pytest
from structlog.testing import capture_logs

from gateway import parse
from gateway.errors import StorageUnavailable
from gateway.storage import models as m

from .conftest import RawSMTP, make_mail

pytestmark = pytest.mark.timeout(180)

INVOICES = "invoices@ap.example.com"


def smtp_send(port, rcpts, raw, *, mail_from="billing@supplier.example", context=None, helo="client.test"):
    """Deliver with smtplib (in a thread); the (code, text) of the reply to the data."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=120) as c:
        c.ehlo()
        if context is not None:
            c.starttls(context=context)
            c.ehlo()
        code, text = c.mail(mail_from)
        assert code == 250, text
        for r in rcpts:
            code, text = c.rcpt(r)
            assert code == 250, text
        code, text = c.data(raw)
        return code, text.decode()


async def send(port, rcpts, raw, **kw):
    return await asyncio.to_thread(smtp_send, port, rcpts, raw, **kw)


async def raw_session(port: int) -> RawSMTP:
    c = await RawSMTP.connect(port)
    assert (await c.reply())[0] == 220
    assert (await c.cmd("EHLO client.test"))[0] == 250
    return c


async def test_message_is_stored_with_envelope_and_two_uploads(smtp_gateway):
    gw = smtp_gateway
    raw = make_mail(to="invoices+acme@ap.example.com", body="Hello\n.a line that starts with a dot\n")
    with capture_logs() as logs:
        code, text = await send(gw.port, ["invoices+acme@ap.example.com", "orders@globex.example.com"], raw)
    assert code == 250 and text.startswith("2.0.0"), text
    uploads = await gw.uploads()
    assert len(uploads) == 2
    for u in uploads:
        assert str(u.id) in text
    by_queue = {u.queue_id: u for u in uploads}
    assert sorted(u.meta.get("tag") for u in by_queue.values() if u.meta) == ["acme"]
    [email] = await gw.emails()
    assert email.source == "smtp"
    assert email.envelope == {
        "mail_from": "billing@supplier.example",
        "rcpt_to": ["invoices+acme@ap.example.com", "orders@globex.example.com"],
        "peer": "127.0.0.1",
        "helo": "client.test",
        "tls": False,
    }
    # Stored exactly as it arrived (dot-unstuffed), no Received header added.
    assert gw.rt.blobs.open_path(email.raw_sha256).read_bytes() == raw
    assert await gw.count(m.Task) == 4  # body + pdf, in each of the two uploads
    accepted = [e for e in logs if e["event"] == "smtp.accepted"]
    assert accepted and sorted(accepted[0]["upload_id"]) == sorted(u.id for u in uploads)
    assert accepted[0]["peer"] == "127.0.0.1"


async def test_same_message_twice_is_one_upload(smtp_gateway):
    gw = smtp_gateway
    raw = make_mail()
    first = await send(gw.port, [INVOICES], raw)
    second = await send(gw.port, [INVOICES], raw)
    assert first[0] == second[0] == 250
    assert "duplicate" in second[1]
    [upload] = await gw.uploads()
    assert f"upload {upload.id} " in first[1] and f"upload {upload.id} " in second[1]


async def test_recipient_without_queue_is_refused_at_rcpt(smtp_gateway):
    gw = smtp_gateway
    c = await raw_session(gw.port)
    assert (await c.cmd("MAIL FROM:<a@sender.example>"))[0] == 250
    code, text = await c.cmd("RCPT TO:<nobody@ap.example.com>")
    assert code == 550 and "5.1.1" in text
    code, text = await c.cmd("RCPT TO:<someone@elsewhere.example>")  # no open relay
    assert code == 550 and "5.1.1" in text
    assert (await c.cmd("DATA"))[0] == 503
    # A good recipient next to a bad one: only the good one gets the message.
    assert (await c.cmd("RCPT TO:<receipts@ap.example.com>"))[0] == 250
    assert (await c.cmd("DATA"))[0] == 354
    code, text = await c.cmd(make_mail(to="receipts@ap.example.com") + b".\r\n")
    assert code == 250, text
    assert (await c.cmd("QUIT"))[0] == 221
    [upload] = await gw.uploads()
    [email] = await gw.emails()
    assert email.envelope["rcpt_to"] == ["receipts@ap.example.com"]


async def test_size_is_advertised_and_enforced_while_reading(start_gateway):
    gw = await start_gateway(max_message_size=4096)
    c = await raw_session(gw.port)
    code, text = await c.cmd("EHLO client.test")
    assert "SIZE 4096" in text
    code, text = await c.cmd("MAIL FROM:<a@sender.example> SIZE=5000")
    assert code == 552 and "5.3.4" in text
    assert (await c.cmd("MAIL FROM:<a@sender.example> SIZE=100"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{INVOICES}>"))[0] == 250
    assert (await c.cmd("DATA"))[0] == 354
    # Lies about its size: cut off while reading, answered after the dot.
    code, text = await c.cmd(b"Subject: big\r\n\r\n" + b"x" * 76 * 200 + b"\r\n.\r\n")
    assert code == 552 and "5.3.4" in text
    # One 100 KB line (read in pieces): refused the same way.
    assert (await c.cmd("MAIL FROM:<a@sender.example>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{INVOICES}>"))[0] == 250
    assert (await c.cmd("DATA"))[0] == 354
    code, text = await c.cmd(b"Subject: big\r\n\r\n" + b"y" * 100_000 + b"\r\n.\r\n")
    assert code == 552 and "5.3.4" in text
    # The session is still in step: a small message goes through.
    assert (await c.cmd("MAIL FROM:<a@sender.example>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{INVOICES}>"))[0] == 250
    assert (await c.cmd("DATA"))[0] == 354
    code, text = await c.cmd(make_mail(pdf=None) + b".\r\n")
    assert code == 250, text
    assert await gw.count(m.Email) == 1


async def test_long_lines_are_accepted_intact(smtp_gateway):
    gw = smtp_gateway
    c = await raw_session(gw.port)
    assert (await c.cmd("MAIL FROM:<a@sender.example>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{INVOICES}>"))[0] == 250
    assert (await c.cmd("DATA"))[0] == 354
    raw = b"Subject: long\r\nMessage-ID: <long@x>\r\n\r\n" + b"z" * 150_000 + b"\r\n..dot\r\n"
    code, text = await c.cmd(raw + b".\r\n")
    assert code == 250, text
    [email] = await gw.emails()
    assert gw.rt.blobs.open_path(email.raw_sha256).read_bytes() == raw.replace(b"\r\n..dot", b"\r\n.dot")


@pytest.mark.parametrize("split", [0, 1, 2, 3, 4, 5])
async def test_end_of_data_is_found_however_the_bytes_arrive(smtp_gateway, split):
    """The reader looks for ".CRLF" preceded by CRLF; lines ending in a dot, a
    dot-stuffed line and the terminator cut at every point must not fool it."""
    gw = smtp_gateway
    raw = (
        b"Subject: dots\r\nMessage-ID: <dots@x>\r\n\r\nA sentence ends here.\r\n"
        b"..\r\nend.\r\n"
    )
    wire = raw.replace(b"\r\n..", b"\r\n...") + b".\r\n"
    c = await raw_session(gw.port)
    assert (await c.cmd("MAIL FROM:<a@sender.example>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{INVOICES}>"))[0] == 250
    assert (await c.cmd("DATA"))[0] == 354
    cut = len(wire) - 5 + split
    for piece in (wire[:cut], wire[cut:]):
        await c.send(piece)
        await asyncio.sleep(0.05)
    code, text = await c.reply()
    assert code == 250, text
    assert (await c.cmd("QUIT"))[0] == 221
    [email] = await gw.emails()
    assert gw.rt.blobs.open_path(email.raw_sha256).read_bytes() == raw


SMUGGLED = (
    b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<invoices@ap.example.com>\r\nDATA\r\n"
    b"From: ceo@victim.example\r\nSubject: smuggled\r\n\r\npay now\r\n"
)
# A bare LF alone is a line end (tests/ingress/test_smtp_bare_lf.py, with the
# whole matrix of smuggling payloads); next to a lone dot it is refused.
PAYLOADS = {
    "lf-dot-crlf": b"Subject: one\r\n\r\nhello\n.\r\n" + SMUGGLED,
    "cr-dot-cr": b"Subject: one\r\n\r\nhello\r.\r" + SMUGGLED,
    "crlf-dot-lf": b"Subject: one\r\n\r\nhello\r\n.\n" + SMUGGLED,
    "bare-cr": b"Subject: one\r\n\r\nhello\rworld\r\n",
}


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
async def test_smuggling_is_refused_and_nothing_stored(smtp_gateway, payload):
    gw = smtp_gateway
    c = await raw_session(gw.port)
    assert (await c.cmd("MAIL FROM:<a@sender.example>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{INVOICES}>"))[0] == 250
    assert (await c.cmd("DATA"))[0] == 354
    code, text = await c.cmd(payload + b".\r\n")
    assert 500 <= code < 600, text
    # Exactly one reply for the whole thing: no smuggled command was executed, and
    # the session is still in step.
    code, text = await c.cmd("NOOP")
    assert code == 250 and text.startswith("250 ") and "2.1.0" not in text, text
    assert (await c.cmd("QUIT"))[0] == 221
    assert await gw.count(m.Email) == 0
    assert await gw.count(m.Upload) == 0


@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_peer"])
async def test_too_many_connections_get_421(start_gateway, limit):
    gw = await start_gateway(**{limit: 2})
    a, b = await raw_session(gw.port), await raw_session(gw.port)
    c = await RawSMTP.connect(gw.port)
    code, text = await c.reply()
    assert code == 421 and "4.7.0" in text
    assert await c.rest() == b""  # and hung up
    a.close()
    await a.writer.wait_closed()
    for _ in range(200):
        if len(gw.listener.sessions) < 2:
            break
        await asyncio.sleep(0.02)
    d = await raw_session(gw.port)  # a slot is free again
    for x in (b, d):
        assert (await x.cmd("QUIT"))[0] == 221


async def test_too_many_messages_on_one_connection_get_421(start_gateway):
    gw = await start_gateway(max_messages_per_connection=1)
    c = await raw_session(gw.port)
    for _ in range(1):
        assert (await c.cmd("MAIL FROM:<a@sender.example>"))[0] == 250
        assert (await c.cmd(f"RCPT TO:<{INVOICES}>"))[0] == 250
        assert (await c.cmd("DATA"))[0] == 354
        assert (await c.cmd(make_mail() + b".\r\n"))[0] == 250
    code, text = await c.cmd("MAIL FROM:<a@sender.example>")
    assert code == 421 and "4.7.0" in text
    assert await c.rest() == b""


async def test_storage_failure_is_451_and_nothing_stored(smtp_gateway):
    gw = smtp_gateway
    blobs = gw.rt.blobs.root / "blobs"
    shutil.rmtree(blobs, ignore_errors=True)
    # Tests run as root, so permissions would not stop a write: a regular file
    # where the blobs folder should be does.
    blobs.write_bytes(b"not a folder")
    code, text = await send(gw.port, [INVOICES], make_mail())
    assert code == 451 and text.startswith("4.3.0"), text
    assert await gw.count(m.Email) == 0 and await gw.count(m.Task) == 0
    blobs.unlink()
    code, text = await send(gw.port, [INVOICES], make_mail())
    assert code == 250, text
    assert await gw.count(m.Email) == 1 and await gw.count(m.Task) == 2


async def test_blob_flush_failure_is_451_and_no_row_committed(smtp_gateway, monkeypatch):
    """The blobs are written unsynced and made durable by one flush before the
    rows commit: when that flush fails, no row may commit and the answer is 451."""
    gw = smtp_gateway
    flushed = []
    real_flush = gw.rt.blobs.flush_sync

    def failing_flush():
        flushed.append(1)
        raise StorageUnavailable("cannot sync blobs: Input/output error")

    monkeypatch.setattr(gw.rt.blobs, "flush_sync", failing_flush)
    code, text = await send(gw.port, [INVOICES], make_mail())
    assert code == 451 and text.startswith("4.3.0"), text
    assert flushed and await gw.count(m.Email) == 0 and await gw.count(m.Task) == 0
    monkeypatch.setattr(gw.rt.blobs, "flush_sync", real_flush)
    code, text = await send(gw.port, [INVOICES], make_mail())
    assert code == 250, text
    assert await gw.count(m.Email) == 1 and await gw.count(m.Task) == 2


async def _break_database(db_url: str):
    """Make the database fail; returns an async function that repairs it."""
    if db_url.startswith("sqlite"):
        # The transaction fails part-way (email and upload rows already written):
        # proves they are rolled back with it.
        path = db_url.partition(":///")[2]

        def rename(a, b):
            con = sqlite3.connect(path, timeout=30)
            con.execute(f"ALTER TABLE {a} RENAME TO {b}")
            con.commit()
            con.close()

        await asyncio.to_thread(rename, "tasks", "tasks_gone")

        async def repair():
            await asyncio.to_thread(rename, "tasks_gone", "tasks")

        return repair
    # PostgreSQL: a real outage, every connection cut and no new one allowed.
    base, _, name = db_url.rpartition("/")
    admin = base.replace("postgresql+asyncpg://", "postgresql://") + "/postgres"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
    finally:
        await conn.close()

    async def repair():
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        finally:
            await conn.close()

    return repair


async def test_database_failure_is_451_and_nothing_stored(smtp_gateway, db_url):
    gw = smtp_gateway
    assert (await send(gw.port, [INVOICES], make_mail(msgid="<warm@x>")))[0] == 250
    repair = await _break_database(db_url)
    try:
        code, text = await send(gw.port, [INVOICES], make_mail())
    finally:
        await repair()
    assert code == 451 and text.startswith("4.3.0"), text
    assert await gw.count(m.Email) == 1 and await gw.count(m.Upload) == 1
    code, text = await send(gw.port, [INVOICES], make_mail())
    assert code == 250, text
    assert await gw.count(m.Email) == 2 and await gw.count(m.Task) == 4


async def test_unexpected_failure_is_451_not_500(smtp_gateway, monkeypatch):
    gw = smtp_gateway

    async def boom(*a, **kw):
        raise RuntimeError("internal detail")

    monkeypatch.setattr(gw.rt.ingestor, "ingest", boom)
    code, text = await send(gw.port, [INVOICES], make_mail())
    assert code == 451 and text.startswith("4.3.0") and "internal" not in text, text

    def broken_router(addresses):
        raise RuntimeError("router exploded")

    # An exception escaping a command goes through handle_exception: 451, too.
    monkeypatch.setattr(gw.rt.ingestor, "routes_for", broken_router)
    c = await raw_session(gw.port)
    assert (await c.cmd("MAIL FROM:<a@sender.example>"))[0] == 250
    code, text = await c.cmd(f"RCPT TO:<{INVOICES}>")
    assert code == 451 and "4.3.0" in text and "exploded" not in text


async def test_starttls_and_tls_recorded(start_gateway, tls_files):
    cert, key = tls_files
    gw = await start_gateway(tls_cert=str(cert), tls_key=str(key))
    c = await raw_session(gw.port)
    code, text = await c.cmd("EHLO client.test")
    assert "STARTTLS" in text and "AUTH" not in text
    c.close()
    ctx = ssl.create_default_context(cafile=str(cert))
    code, text = await send(gw.port, [INVOICES], make_mail(), context=ctx)
    assert code == 250, text
    [email] = await gw.emails()
    assert email.envelope["tls"] is True


async def test_require_tls_refuses_plain_mail(start_gateway, tls_files):
    cert, key = tls_files
    gw = await start_gateway(tls_cert=str(cert), tls_key=str(key), require_tls=True)
    c = await raw_session(gw.port)
    code, text = await c.cmd("MAIL FROM:<a@sender.example>")
    assert code == 530, text
    ctx = ssl.create_default_context(cafile=str(cert))
    code, text = await send(gw.port, [INVOICES], make_mail(), context=ctx)
    assert code == 250, text
    assert await gw.count(m.Email) == 1


async def test_stop_finishes_message_in_flight_and_421s_idle_sessions(smtp_gateway):
    gw = smtp_gateway
    busy = await raw_session(gw.port)
    idle = await raw_session(gw.port)
    assert (await busy.cmd("MAIL FROM:<a@sender.example>"))[0] == 250
    assert (await busy.cmd(f"RCPT TO:<{INVOICES}>"))[0] == 250
    assert (await busy.cmd("DATA"))[0] == 354
    raw = make_mail()
    await busy.send(raw[:200])
    stopping = asyncio.create_task(gw.listener.stop(30))
    code, text = await idle.reply()
    assert code == 421, text
    assert await idle.rest() == b""
    with pytest.raises(OSError):  # no longer accepting
        await RawSMTP.connect(gw.port)
    await busy.send(raw[200:])
    code, text = await busy.cmd(b".\r\n")
    assert code == 250, text
    assert (await busy.reply())[0] == 421  # then told to go away
    await asyncio.wait_for(stopping, 30)
    assert await gw.count(m.Email) == 1


async def test_stop_421s_a_message_that_does_not_finish_in_time(smtp_gateway):
    gw = smtp_gateway
    c = await raw_session(gw.port)
    assert (await c.cmd("MAIL FROM:<a@sender.example>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{INVOICES}>"))[0] == 250
    assert (await c.cmd("DATA"))[0] == 354
    await c.send(make_mail()[:300])
    await asyncio.wait_for(gw.listener.stop(0.3), 30)
    code, text = await c.reply()
    assert code == 421, text
    assert await gw.count(m.Email) == 0


async def _until(event: threading.Event, timeout: float = 120) -> None:
    for _ in range(int(timeout / 0.05)):
        if event.is_set():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the large message never reached that step")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_large_message_does_not_stall_another_session(start_gateway, monkeypatch):
    """A 40 MB message is held inside parsing, then inside hashing/writing (both
    in worker threads, parse_processes = 0: with helpers, tests/test_parse_deadline.py);
    a small message on a second connection is accepted each time. Were either
    step run on the event loop, the small one could not be."""
    gw = await start_gateway(storage={"parse_processes": 0})
    big = make_mail(msgid="<big@x>", pdf=os.urandom(29_000_000))
    assert 39_000_000 < len(big) < gw.rt.settings.smtp.max_message_size
    in_parse, go_parse, in_store, go_store = (threading.Event() for _ in range(4))
    real_parse, real_put = parse.parse_message, gw.rt.blobs.put_sync

    def held_parse(raw, **kw):
        if len(raw) > 10_000_000:
            in_parse.set()
            go_parse.wait(120)
        return real_parse(raw, **kw)

    def held_put(data, sha256=None, **kw):
        if len(data) > 10_000_000 and not in_store.is_set():
            in_store.set()
            go_store.wait(120)
        return real_put(data, sha256, **kw)

    monkeypatch.setattr(parse, "parse_message", held_parse)
    monkeypatch.setattr(gw.rt.blobs, "put_sync", held_put)
    large = asyncio.create_task(send(gw.port, [INVOICES], big))
    try:
        await _until(in_parse)
        code, text = await asyncio.wait_for(send(gw.port, [INVOICES], make_mail(msgid="<small-1@x>")), 60)
        assert code == 250, text
        assert not large.done()
        go_parse.set()
        await _until(in_store)
        code, text = await asyncio.wait_for(send(gw.port, [INVOICES], make_mail(msgid="<small-2@x>")), 60)
        assert code == 250, text
        assert not large.done()
    finally:
        go_parse.set()
        go_store.set()
    code, text = await asyncio.wait_for(large, 120)
    assert code == 250, text
    emails = await gw.emails()
    assert [e.message_id for e in emails][-1].strip("<>") == "big@x"
    assert len(emails) == 3


async def _wait_log(path, needle: str, count: int = 1, timeout: float = 90) -> list[str]:
    """Lines of Postfix's maillog containing ``needle``, once there are ``count``."""
    for _ in range(int(timeout / 0.25)):
        lines = [line for line in (path.read_text() if path.exists() else "").splitlines() if needle in line]
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.25)
    raise AssertionError(f"no {count}x {needle!r} in {path}:\n{path.read_text() if path.exists() else ''}")


def _submit(port: int, rcpts: list[str], raw: bytes, sender: str = "") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
        # Null sender by default: a bounce notice would otherwise be relayed to
        # the gateway too.
        c.sendmail(sender, rcpts, raw)


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_postfix_delivers_on_250_retries_451_bounces_550(smtp_gateway, postfix_relay):
    gw = smtp_gateway
    port, d = await asyncio.to_thread(postfix_relay, gw.port)
    maillog = d / "maillog"

    await asyncio.to_thread(_submit, port, [INVOICES], make_mail(msgid="<pf-1@x>"))
    [sent] = await _wait_log(maillog, "status=sent")
    assert "250 2.0.0" in sent

    await asyncio.to_thread(_submit, port, ["nobody@ap.example.com"], make_mail(msgid="<pf-2@x>"))
    [bounced] = await _wait_log(maillog, "status=bounced")
    assert "550 5.1.1" in bounced

    blobs = gw.rt.blobs.root / "blobs"
    shutil.rmtree(blobs)
    blobs.write_bytes(b"storage is down")
    # A real sender here: this relay gives up at once on deferred null-sender mail.
    await asyncio.to_thread(_submit, port, [INVOICES], make_mail(msgid="<pf-3@x>"), "billing@supplier.example")
    deferred = await _wait_log(maillog, "status=deferred")
    assert "451 4.3.0" in deferred[0]
    assert await gw.count(m.Email) == 1
    blobs.unlink()  # storage is back: Postfix's next retry gets through
    await _wait_log(maillog, "status=sent", count=2)
    ids = sorted(e.message_id.strip("<>") for e in await gw.emails())
    assert ids == ["pf-1@x", "pf-3@x"]
    assert await gw.count(m.Upload) == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_check_loads_the_tls_pair(make_settings, db_url, tls_files, tmp_path):
    from gateway.checks import check_smtp

    cert, key = tls_files
    good = make_settings(db_url, smtp={"enabled": True, "tls_cert": str(cert), "tls_key": str(key)})
    [row] = [r async for r in check_smtp(good)]
    assert row.ok and "STARTTLS offered" in row.detail
    wrong = tmp_path / "wrong-key.pem"
    wrong.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    bad = make_settings(db_url, smtp={"enabled": True, "tls_cert": str(cert), "tls_key": str(wrong)})
    [row] = [r async for r in check_smtp(bad)]
    assert not row.ok and str(wrong) in row.detail


async def test_recipient_limit_and_empty_data(start_gateway):
    gw = await start_gateway(max_recipients=2)
    c = await raw_session(gw.port)
    assert (await c.cmd("MAIL FROM:<a@sender.example>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{INVOICES}>"))[0] == 250
    assert (await c.cmd("RCPT TO:<receipts@ap.example.com>"))[0] == 250
    code, text = await c.cmd("RCPT TO:<orders@globex.example.com>")
    assert code == 452 and "4.5.3" in text
    assert (await c.cmd("DATA"))[0] == 354
    # No data at all, just the dot: a clear answer and a session still in step.
    code, text = await c.cmd(b".\r\n")
    assert code in (250, 554), text
    assert (await c.cmd("NOOP"))[0] == 250
    assert (await c.cmd("QUIT"))[0] == 221


async def _wait_buffered(listener, at_least: int, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while listener.buffered < at_least:
        assert loop.time() < deadline, f"server holds {listener.buffered} bytes, expected {at_least}"
        await asyncio.sleep(0.01)


async def test_memory_budget_is_shared_by_sessions_and_answered_with_452(start_gateway):
    """All sessions together hold at most max_buffered_bytes of message data; the
    message that would go past it gets a temporary 452 4.3.1, the budget comes
    back when messages are stored or their sessions drop, and the retry lands."""
    gw = await start_gateway(max_message_size=100_000, max_buffered_bytes=150_000)
    half = (b"z" * 998 + b"\r\n") * 80  # 80 KB: two of these do not fit at once

    async def open_data(c):
        assert (await c.cmd("MAIL FROM:<a@sender.example>"))[0] == 250
        assert (await c.cmd(f"RCPT TO:<{INVOICES}>"))[0] == 250
        assert (await c.cmd("DATA"))[0] == 354

    a = await raw_session(gw.port)
    await open_data(a)
    await a.send(make_mail(msgid="<held@x>", pdf=None).replace(b"\r\n\r\n", b"\r\n\r\n" + half, 1))
    await _wait_buffered(gw.listener, 79_000)  # A's data is in (but the last bytes, which could start the dot), its dot is not

    b = await raw_session(gw.port)
    await open_data(b)
    code, text = await b.cmd(make_mail(msgid="<second@x>", pdf=None).replace(b"\r\n\r\n", b"\r\n\r\n" + half, 1) + b".\r\n")
    assert code == 452 and "4.3.1" in text, text
    # A small message still fits beside A's.
    await open_data(b)
    code, text = await b.cmd(make_mail(msgid="<small@x>", pdf=None) + b".\r\n")
    assert code == 250, text

    code, text = await a.cmd(b".\r\n")  # A finishes: stored, its bytes given back
    assert code == 250, text
    assert gw.listener.buffered == 0
    await open_data(b)  # the sender's retry
    code, text = await b.cmd(make_mail(msgid="<second@x>", pdf=None).replace(b"\r\n\r\n", b"\r\n\r\n" + half, 1) + b".\r\n")
    assert code == 250, text

    # A session that drops mid-DATA gives its bytes back too.
    c = await raw_session(gw.port)
    await open_data(c)
    await c.send(half)
    await _wait_buffered(gw.listener, 79_000)
    c.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while gw.listener.buffered:
        assert loop.time() < deadline, gw.listener.buffered
        await asyncio.sleep(0.01)
    assert await gw.count(m.Email) == 3
    a.close()
    b.close()


@pytest.mark.parametrize(
    "arg",
    [
        "<a@b.example>", "<a.b+tag@x-y.example.com> SIZE=100", "<a@b.example>  BODY=8BITMIME",
        "<a@b.example>\tSIZE=1", "<a@b.example> (comment) SIZE=1", "<a..b@c>", "<.a@b>", "<a@b.>",
        '<"quoted local"@b.example>', "<a@[192.0.2.1]>", "<>", "< a@b.example>", "<a@b..c>",
        "<user!x#y$z%w&v'u*t/s=r?q^p_o`n{m|l}k~j-i@d.example>", "a@b.example", "<a@b.example",
    ],
)
def test_address_fast_path_agrees_with_the_header_parser(arg):
    """The regex fast path of GatewaySMTP._getaddr must give what aiosmtpd's
    header-parser path gives, for every form it accepts."""
    from email._header_value_parser import get_addr_spec, get_angle_addr
    from email.errors import HeaderParseError

    from gateway.ingress.smtp import GatewaySMTP

    class Session:
        local_part_limit = 0

    try:
        token, rest = (get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec)(arg)
        expected = (token.addr_spec, rest)
    except HeaderParseError:
        expected = (None, None)
    assert GatewaySMTP._getaddr(Session(), arg) == expected
