"""Sender verdicts end to end (issue 16): real SMTP (smtplib), a real DNS
server (NSD on loopback), mails DKIM-signed with dkimpy; the verdict stored,
our Authentication-Results on top, each queue's sender_policy applied."""

from __future__ import annotations

import smtplib
import time
from contextlib import AsyncExitStack

import pytest
from sqlalchemy import select

from gateway.ingress.smtp import SMTPListener
from gateway.runtime import open_runtime
from gateway.sender_policy import evaluate
from gateway.config import SenderPolicy
from gateway.storage import models as m
from tests.peers import dns as dns_peer
from tests.test_sender_auth import _forward_through_list, _key_record, _keypair, sign

LOOPBACK = "127.0.0.1"  # the SMTP client's address: what SPF is checked for
OUR_ID = "gw.test"


@pytest.fixture(scope="module")
def keys():
    return {name: _keypair() for name in ("supplier", "lookalike", "forwarder")}


@pytest.fixture(scope="module")
def nsd(tmp_path_factory, keys):
    if reason := dns_peer.missing():
        pytest.skip(reason)
    server = dns_peer.Nsd.create(tmp_path_factory.mktemp("nsd"), zones=("example",))
    txt = dns_peer.txt
    server.serve([
        txt("supplier.example.", f"v=spf1 ip4:{LOOPBACK} -all"),
        _key_record("sel._domainkey.supplier.example.", keys["supplier"][1]),
        txt("_dmarc.supplier.example.", "v=DMARC1; p=reject"),
        # A look-alike with records of its own: everything passes for it.
        txt("supp1ier.example.", f"v=spf1 ip4:{LOOPBACK} -all"),
        _key_record("sel._domainkey.supp1ier.example.", keys["lookalike"][1]),
        txt("_dmarc.supp1ier.example.", "v=DMARC1; p=none"),
        # A domain whose SPF does not list us, under p=reject.
        txt("bank.example.", "v=spf1 ip4:192.0.2.99 -all"),
        txt("_dmarc.bank.example.", "v=DMARC1; p=reject"),
        # A mailing list that forwards (and ARC-seals) what it relays.
        txt("forwarder.example.", f"v=spf1 ip4:{LOOPBACK} -all"),
        _key_record("arc._domainkey.forwarder.example.", keys["forwarder"][1]),
    ])
    yield server
    server.stop()


QUEUES = [
    {"name": "invoices", "organization": "acme", "addresses": ["invoices@ap.example.com"],
     "sender_policy": {"require": "dmarc", "on_failure": "review"}},
    {"name": "strict", "organization": "acme", "addresses": ["strict@ap.example.com"],
     "sender_policy": {"require": "dmarc", "on_failure": "reject"}},
    {"name": "open", "organization": "acme", "addresses": ["open@ap.example.com"],
     "sender_policy": {"require": "none", "on_failure": "accept", "lookalike": False}},
]


@pytest.fixture
async def gateway(nsd, db_url, make_settings):
    stack = AsyncExitStack()

    async def start(nameserver: str | None = None):
        settings = make_settings(
            db_url,
            smtp={"enabled": True, "port": 0, "hostname": OUR_ID},
            authentication={"enabled": True, "nameservers": [nameserver or nsd.address], "timeout": 0.5},
            queues=QUEUES,
        )
        rt = await stack.enter_async_context(open_runtime(settings, migrate=True))
        listener = SMTPListener(rt)
        await listener.start()
        stack.push_async_callback(listener.stop, 2)
        return rt, listener.port

    async with stack:
        yield start


def mail(from_addr: str, subject: str, extra: str = "") -> bytes:
    return (
        f"{extra}From: Supplier Billing <{from_addr}>\r\nTo: invoices@ap.example.com\r\nSubject: {subject}\r\n"
        f"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '-')}.{time.monotonic_ns()}@x>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease pay invoice 42.\r\n"
    ).encode()


def send(port: int, raw: bytes, rcpt: str = "invoices@ap.example.com", mail_from: str = "billing@supplier.example"):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("mx.supplier.example")
        try:
            c.sendmail(mail_from, [rcpt], raw)
            return 250, ""
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error.decode()


async def upload_state(rt, subject: str):
    async with rt.sessions() as s:
        email = (await s.scalars(select(m.Email).where(m.Email.subject == subject))).one()
        upload = (await s.scalars(select(m.Upload).where(m.Upload.email_id == email.id))).one()
        tasks = (await s.scalars(select(m.Task).where(m.Task.upload_id == upload.id))).all()
        events = (await s.scalars(select(m.TaskEvent).where(m.TaskEvent.task_id.in_([t.id for t in tasks])))).all()
    raw = await rt.blobs.get(email.raw_sha256)
    return email, [t.status for t in tasks], [e.reason for e in events], raw


async def test_aligned_pass_is_queued_and_stamped(gateway, keys):
    rt, port = await gateway()
    raw = sign(mail("billing@supplier.example", "aligned pass"), "supplier.example", keys["supplier"][0])
    assert (await _send(port, raw))[0] == 250
    email, statuses, _, stored = await upload_state(rt, "aligned pass")
    v = email.authentication
    assert (v["spf"]["result"], v["dkim"][0]["result"], v["dmarc"]["result"]) == ("pass", "pass", "pass")
    assert statuses == ["queued"]
    assert stored.startswith(b"Authentication-Results: " + OUR_ID.encode() + b";") and stored.endswith(raw)
    async with rt.sessions() as s:
        known = (await s.scalars(select(m.KnownSender.domain))).all()
    assert known == ["supplier.example"]


async def _send(port, raw, **kw):
    import asyncio

    return await asyncio.to_thread(send, port, raw, **kw)


async def test_forged_sender_is_held_for_review_or_refused(gateway):
    rt, port = await gateway()
    forged = mail("payments@bank.example", "new bank details")
    code, _ = await _send(port, forged, mail_from="payments@bank.example")
    assert code == 250  # accepted, never dropped
    email, statuses, reasons, _ = await upload_state(rt, "new bank details")
    assert email.authentication["dmarc"]["result"] == "fail" and statuses == ["reviewing"]
    assert any("dmarc=fail under the domain's p=reject" in (r or "") for r in reasons)
    code, text = await _send(port, mail("payments@bank.example", "refused"), rcpt="strict@ap.example.com",
                             mail_from="payments@bank.example")
    assert code == 550 and "5.7.1" in text and "dmarc=fail" in text
    async with rt.sessions() as s:
        assert (await s.scalars(select(m.Email).where(m.Email.subject == "refused"))).first() is None


async def test_tampered_body_fails_dkim(gateway, keys):
    rt, port = await gateway()
    raw = sign(mail("billing@supplier.example", "tampered"), "supplier.example", keys["supplier"][0])
    raw = raw.replace(b"invoice 42", b"invoice 43")
    await _send(port, raw)
    email, statuses, _, _ = await upload_state(rt, "tampered")
    assert email.authentication["dkim"][0]["result"] == "fail"
    assert email.authentication["dmarc"]["result"] == "pass"  # on SPF alone
    assert statuses == ["queued"]


async def test_forged_inbound_authentication_results_is_ignored(gateway):
    rt, port = await gateway()
    forged = mail("payments@bank.example", "claims pass",
                  extra=f"Authentication-Results: {OUR_ID}; dmarc=pass header.from=bank.example\r\n")
    await _send(port, forged, mail_from="payments@bank.example")
    email, statuses, _, _ = await upload_state(rt, "claims pass")
    assert "ignored" in email.authentication and email.authentication["dmarc"]["result"] == "fail"
    assert statuses == ["reviewing"]


async def test_lookalike_of_a_known_sender_is_held(gateway, keys):
    rt, port = await gateway()
    await _send(port, sign(mail("billing@supplier.example", "first"), "supplier.example", keys["supplier"][0]))
    raw = sign(mail("billing@supp1ier.example", "lookalike"), "supp1ier.example", keys["lookalike"][0])
    await _send(port, raw, mail_from="billing@supp1ier.example")
    email, statuses, reasons, _ = await upload_state(rt, "lookalike")
    assert email.authentication["dmarc"]["result"] == "pass"  # its own records are fine
    assert statuses == ["reviewing"]
    assert any((r or "").startswith("lookalike_domain") and "supplier.example" in r for r in reasons)
    # The queue without look-alike checks takes it.
    await _send(port, sign(mail("billing@supp1ier.example", "open queue"), "supp1ier.example", keys["lookalike"][0]),
                rcpt="open@ap.example.com", mail_from="billing@supp1ier.example")
    assert (await upload_state(rt, "open queue"))[1] == ["queued"]


async def test_dns_timeout_is_temperror_and_the_mail_is_kept(gateway, tmp_path):
    silent = dns_peer.Silent()
    try:
        rt, port = await gateway(nameserver=silent.address)
        started = time.monotonic()
        code, _ = await _send(port, mail("billing@supplier.example", "dns down"))
        assert code == 250 and time.monotonic() - started < 10
        email, statuses, reasons, _ = await upload_state(rt, "dns down")
        assert email.authentication["dmarc"]["result"] == "temperror"
        assert statuses == ["reviewing"] and any("temperror" in (r or "") for r in reasons)
    finally:
        silent.close()


@pytest.mark.parametrize("from_header, policy, action", [
    ("a@supplier.example", {"deny": ["supplier.example"]}, "review"),
    ("a@supplier.example", {"deny": ["a@supplier.example"], "on_failure": "reject"}, "reject"),
    ("a@evil.example", {"allow": ["*.example"], "require": "dmarc"}, "accept"),
    ("a@evil.example", {"require": "spf_or_dkim"}, "review"),
])
def test_allow_and_deny_lists(from_header, policy, action):
    verdict = {"spf": {"result": "fail"}, "dkim": [], "dmarc": {"result": "none"}, "arc": {"result": "none"}}
    assert evaluate(verdict, from_header, SenderPolicy(**policy), None).action == action


async def test_replay_trusts_only_a_configured_upstream_and_records_a_rejected_upload(nsd, db_url, make_settings):
    settings = make_settings(
        db_url, smtp={"hostname": OUR_ID}, queues=QUEUES,
        authentication={"enabled": True, "nameservers": [nsd.address], "trusted_authserv_ids": ["mx.provider.test"]},
    )
    async with open_runtime(settings, migrate=True) as rt:
        # Not signed, no connection seen: only the trusted provider's topmost header speaks for SPF/DMARC.
        upstream = ("Authentication-Results: mx.provider.test; spf=pass smtp.mailfrom=supplier.example;"
                    " dmarc=pass (p=REJECT) header.from=supplier.example\r\n")
        r = await rt.ingestor.ingest(mail("billing@supplier.example", "via provider", extra=upstream), "imap",
                                     queues=["invoices"])
        email, statuses, _, _ = await upload_state(rt, "via provider")
        assert email.authentication["upstream"] == "mx.provider.test"
        assert email.authentication["dmarc"]["result"] == "pass" and statuses == ["queued"]
        # The same header from anyone else is nobody's word.
        other = upstream.replace("mx.provider.test", "mx.anyone.test")
        await rt.ingestor.ingest(mail("billing@supplier.example", "via stranger", extra=other), "replay",
                                 queues=["invoices"])
        email, statuses, _, _ = await upload_state(rt, "via stranger")
        assert "upstream" not in email.authentication and email.authentication["dmarc"]["result"] != "pass"
        assert statuses == ["reviewing"]
        # A rejecting queue outside SMTP: the upload is recorded, its tasks discarded with the reason.
        r = await rt.ingestor.ingest(mail("payments@bank.example", "replayed forgery"), "replay", queues=["strict"])
        assert r.status == "created"
        _, statuses, reasons, _ = await upload_state(rt, "replayed forgery")
        assert statuses == ["discarded"] and any((x or "").startswith("rejected: ") for x in reasons)


async def test_forwarded_mail_with_a_valid_arc_chain(gateway, keys):
    rt, port = await gateway()
    original = sign(mail("billing@supplier.example", "Invoice 42"), "supplier.example", keys["supplier"][0])
    forwarded = _forward_through_list(original, keys)
    code, _ = await _send(port, forwarded, mail_from="ap-list-bounces@forwarder.example")
    assert code == 250
    email, statuses, reasons, _ = await upload_state(rt, "[ap-list] Invoice 42")
    v = email.authentication
    assert v["arc"]["result"] == "pass" and v["arc"]["sealers"] == ["forwarder.example"]
    assert v["dkim"][0]["result"] == "fail" and v["spf"]["domain"] == "forwarder.example"
    # The chain is recorded for a person to weigh; it does not override the
    # author domain's p=reject on its own (no sealer is trusted by configuration).
    assert v["dmarc"]["result"] == "fail" and statuses == ["reviewing"]
