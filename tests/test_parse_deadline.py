"""One slow mail must not stall everyone (issue 15, item 1).

* The header bomb (an unclosed quote and 300,000 semicolons in a
  Content-Disposition, quadratic in CPython's parameter splitter) is cut
  before parsing: it is stored at once, and normal mails sent beside it keep
  their latency.
* A parse past ``parse_timeout`` is stopped (the helper killed and replaced)
  or abandoned (a thread), and the mail is still stored: its raw message is
  the body document, whose task waits in ``reviewing``.
* Mails queued behind a slow parse go to another helper.
"""

from __future__ import annotations

import asyncio
import smtplib
import statistics
import threading
import time

import pytest
from sqlalchemy import select

from gateway.ingress.smtp import SMTPListener
from gateway.runtime import open_runtime
from gateway.storage import models as m
from tests.ingress.conftest import make_mail


def bomb_mail(semicolons: int = 300_000) -> bytes:
    return (
        b"From: x@attacker.example\r\nTo: invoices@ap.example.com\r\nSubject: bomb\r\n"
        b"Message-ID: <bomb@attacker.example>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n'
        b'--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="x'
        + b";" * semicolons + b"\r\n\r\n%PDF-1.4\r\n--b--\r\n"
    )


def many_parts_mail(n: int, tag: str = "slow") -> bytes:
    """A legitimate but slow parse: n small parts (8,000 take about a second)."""
    parts = b"".join(
        b"--b\r\nContent-Type: application/octet-stream; name=f%d.bin\r\n\r\n%s\r\n" % (i, b"x" * 200) for i in range(n)
    )
    return (
        b"To: invoices@ap.example.com\r\nFrom: a@b.example\r\nSubject: " + tag.encode()
        + b"\r\nMessage-ID: <" + tag.encode() + b"@b.example>\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--\r\n"
    )


def test_the_bomb_is_cut_before_parsing():
    from gateway.parse import parse_message

    started = time.process_time()
    mail = parse_message(bomb_mail())
    assert time.process_time() - started < 2  # was over a minute
    assert any("cut to 100 parameters" in d for d in mail.defects)
    assert [d.kind for d in mail.documents] == ["body", "attachment"]


async def _listener(rt):
    listener = SMTPListener(rt)
    await listener.start()
    return listener


def _send_timed(port: int, raws: list[bytes], out: list[float]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as c:
        for raw in raws:
            t = time.perf_counter()
            c.sendmail("a@b.example", ["invoices@ap.example.com"], raw)
            out.append(time.perf_counter() - t)


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 2 else max(values)


@pytest.mark.timeout(240)
async def test_normal_mails_keep_their_latency_beside_the_bomb(make_settings, sqlite_url):
    settings = make_settings(sqlite_url, smtp={"enabled": True, "port": 0, "hostname": "gw.test"})
    async with open_runtime(settings, migrate=True) as rt:
        listener = await _listener(rt)
        try:
            port = listener.port
            normals = [make_mail(msgid=f"<n{i}@supplier.example>", subject=f"n{i}") for i in range(80)]
            alone: list[float] = []
            await asyncio.to_thread(_send_timed, port, normals[:40], alone)
            side: list[float] = []
            bomb_time: list[float] = []
            bomb = threading.Thread(target=_send_timed, args=(port, [bomb_mail()], bomb_time))
            bomb.start()
            await asyncio.sleep(0.05)  # the bomb is being parsed
            await asyncio.to_thread(_send_timed, port, normals[40:], side)
            await asyncio.to_thread(bomb.join, 120)
            assert bomb_time and bomb_time[0] < 10, bomb_time  # stored, not 72 s
            # 2x the p99 alone, with 100 ms of slack for a shared 2-CPU machine.
            assert _p99(side) <= max(2 * _p99(alone), _p99(alone) + 0.1), (_p99(alone), _p99(side))
            async with rt.sessions() as s:
                email = (await s.scalars(select(m.Email).where(m.Email.message_id == "bomb@attacker.example"))).one()
            assert any("cut to 100 parameters" in d for d in email.defects)
        finally:
            await listener.stop(2)


@pytest.mark.parametrize("processes", [1, 0], ids=["helper", "thread"])
async def test_a_parse_past_the_deadline_is_stored_unparsed_for_review(db_url, make_settings, processes):
    settings = make_settings(db_url, storage={"parse_processes": processes, "parse_timeout": 0.05})
    async with open_runtime(settings, migrate=True) as rt:
        raw = many_parts_mail(8000)  # about a second of parsing
        if processes:
            await rt.ingestor.ingest(make_mail(msgid="<warm@x>"), "replay")  # the helper is up
            pid = rt.ingestor._processes.helpers[0].proc.pid
        result = await rt.ingestor.ingest(raw, "smtp")
        assert result.status == "created"
        async with rt.sessions() as s:
            docs = (await s.scalars(select(m.Document).where(m.Document.upload_id == result.upload_ids[0]))).all()
            tasks = (await s.scalars(select(m.Task).where(m.Task.upload_id == result.upload_ids[0]))).all()
            email = await s.get(m.Email, result.email_id)
            events = (await s.scalars(select(m.TaskEvent).where(m.TaskEvent.task_id == tasks[0].id))).all()
        assert [(d.kind, d.content_type, d.size) for d in docs] == [("body", "message/rfc822", len(raw))]
        assert [t.status for t in tasks] == ["reviewing"]
        assert events[0].reason.startswith("parse_timeout: parsing took longer than 0.05 s")
        assert email.subject == "slow" and email.parts[0]["reason"] == "parse_timeout"
        assert await rt.blobs.get(docs[0].sha256) == raw
        # The same mail again is the same upload (the fingerprint needs no parse).
        again = await rt.ingestor.ingest(raw, "smtp")
        assert again.status == "duplicate" and again.upload_ids == result.upload_ids
        # The next mail is parsed as usual (by a new helper: the stuck one was killed).
        ok = await rt.ingestor.ingest(make_mail(msgid="<after@x>"), "smtp")
        assert ok.status == "created"
        if processes:
            assert pid not in [h.proc.pid for h in rt.ingestor._processes.helpers if h.alive]


async def test_mails_queued_behind_a_slow_parse_go_to_another_helper(sqlite_url, make_settings):
    settings = make_settings(sqlite_url, storage={"parse_processes": 1, "parse_timeout": 60})
    async with open_runtime(settings, migrate=True) as rt:
        await rt.ingestor.ingest(make_mail(msgid="<warm@x>"), "replay")
        slow = asyncio.create_task(rt.ingestor.ingest(many_parts_mail(60000), "smtp"))  # ~5 s of parsing
        await asyncio.sleep(0.1)
        started = time.monotonic()
        quick = await asyncio.gather(*(
            rt.ingestor.ingest(make_mail(msgid=f"<q{i}@x>", subject=f"q{i}"), "smtp") for i in range(10)
        ))
        waited = time.monotonic() - started
        # Moved after STALL_SECONDS (1 s) to a spare helper (about a second to
        # start), not held for the whole slow parse.
        assert not slow.done(), f"the quick mails waited for the slow one ({waited:.1f} s)"
        assert all(r.status == "created" for r in quick)
        result = await slow
        assert result.status == "created"
        assert time.monotonic() - started > waited


@pytest.mark.parametrize("name", [b"Content-Disposition", b"CONTENT-TYPE", b"content-type \t"])
def test_caps_find_content_fields_in_any_case_and_at_the_very_start(name):
    from gateway.parse_guard import MAX_PARAMS, cap_headers

    field = name + b": attachment; filename=\"x" + b";" * 500 + b"\r\n"
    for raw in (field + b"\r\nbody\r\n", b"Subject: s\r\n" + field + b"\r\nbody\r\n"):
        capped, cut = cap_headers(raw)
        assert len(cut) == 1 and capped.count(b";") == MAX_PARAMS and capped.endswith(b"\r\n\r\nbody\r\n")
