"""Sender verdicts (gateway.sender_auth) against a real DNS server (NSD on loopback).

Mails are DKIM-signed and ARC-sealed with dkimpy using RSA keys made here with
openssl; the zones the tests publish hold the SPF, DKIM key and DMARC records.
"""

from __future__ import annotations

import base64
import subprocess
import time

import dkim
import pytest

from gateway.sender_auth import (
    Resolver,
    Verdict,
    authentication_results,
    claims_our_id,
    org_domain,
    trusted_upstream,
    verify,
)
from gateway.sender_auth.headers import parse
from gateway.sender_auth.resolver import parse_nameserver
from gateway.sender_auth.verdict import ArcResult, DkimResult, DmarcResult, SpfResult
from tests.peers import dns as dns_peer

SUPPLIER_IP = "192.0.2.10"
FORWARDER_IP = "192.0.2.20"
EVIL_IP = "198.51.100.7"
STRANGER_IP = "203.0.113.5"
OUR_ID = "gateway.test"


def _keypair() -> tuple[bytes, str]:
    """(PKCS#1 PEM private key for dkimpy, base64 public key for the p= tag)."""
    private = subprocess.run(
        ["openssl", "genrsa", "-traditional", "2048"], capture_output=True, check=True
    ).stdout
    public = subprocess.run(
        ["openssl", "rsa", "-pubout", "-outform", "DER"], input=private, capture_output=True, check=True
    ).stdout
    return private, base64.b64encode(public).decode()


@pytest.fixture(scope="module")
def keys():
    return {name: _keypair() for name in ("supplier", "forwarder", "evil")}


def _key_record(name: str, public: str) -> str:
    return dns_peer.txt(name, f"v=DKIM1; k=rsa; p={public}")


@pytest.fixture(scope="module")
def nsd(tmp_path_factory, keys):
    if reason := dns_peer.missing():
        pytest.skip(reason)
    server = dns_peer.Nsd.create(tmp_path_factory.mktemp("nsd"), zones=("example", "test"))
    txt = dns_peer.txt
    server.serve(
        [
            txt("supplier.example.", f"v=spf1 ip4:{SUPPLIER_IP} -all"),
            _key_record("sel._domainkey.supplier.example.", keys["supplier"][1]),
            txt("_dmarc.supplier.example.", "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@supplier.example"),
            "mail.supplier.example. 300 IN A 192.0.2.11",
            txt("mail.supplier.example.", "v=spf1 a -all"),
            _key_record("sel._domainkey.mail.supplier.example.", keys["supplier"][1]),
            txt("evil.example.", f"v=spf1 ip4:{EVIL_IP} -all"),
            _key_record("sel._domainkey.evil.example.", keys["evil"][1]),
            txt("_dmarc.evil.example.", "v=DMARC1; p=none"),
            txt("forwarder.example.", f"v=spf1 ip4:{FORWARDER_IP} -all"),
            _key_record("arc._domainkey.forwarder.example.", keys["forwarder"][1]),
            # strict alignment; a sub-domain signs
            txt("strict.test.", f"v=spf1 ip4:{SUPPLIER_IP} -all"),
            txt("_dmarc.strict.test.", "v=DMARC1; p=quarantine; adkim=s; aspf=s"),
            _key_record("sel._domainkey.mail.strict.test.", keys["supplier"][1]),
            # broken records
            txt("broken.example.", "v=spf1 ip4:192.0.2.300 -all"),
            txt("_dmarc.broken.example.", "v=DMARC1; p=maybe"),
            txt("sel._domainkey.broken.example.", "v=DKIM1; k=rsa; p=bm90IGEga2V5"),
        ]
    )
    yield server
    server.stop()


@pytest.fixture
def resolver(nsd):
    return Resolver([nsd.address], timeout=2.0)


def mail(from_addr: str = "billing@supplier.example", body: str = "Please pay invoice 42 by Friday.\r\n",
         extra: str = "") -> bytes:
    return (
        f"{extra}From: Supplier Billing <{from_addr}>\r\n"
        "To: invoices@ap.example.com\r\n"
        "Subject: Invoice 42\r\n"
        "Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
        f"Message-ID: <42.{time.monotonic_ns()}@supplier.example>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{body}"
    ).encode()


def sign(message: bytes, domain: str, private: bytes, selector: str = "sel") -> bytes:
    header = dkim.sign(
        message, selector.encode(), domain.encode(), private,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return header + message


def check(raw: bytes, resolver: Resolver, peer_ip: str | None = SUPPLIER_IP,
          mail_from: str | None = "billing@supplier.example", helo: str = "mx.supplier.example") -> dict:
    verdict = verify(raw, peer_ip=peer_ip, helo=helo, mail_from=mail_from, resolver=resolver)
    assert Verdict.from_dict(verdict.as_dict()) == verdict
    return verdict.as_dict()


# --- the cases issue 16 names ------------------------------------------------


def test_aligned_pass(resolver, keys):
    raw = sign(mail(), "supplier.example", keys["supplier"][0])
    v = check(raw, resolver)
    assert v["spf"] == {"result": "pass", "domain": "supplier.example", "scope": "mailfrom",
                        "reason": v["spf"]["reason"]}
    assert f"ip4:{SUPPLIER_IP}" in v["spf"]["reason"]
    assert [(d["result"], d["domain"], d["selector"]) for d in v["dkim"]] == [("pass", "supplier.example", "sel")]
    assert v["dmarc"]["result"] == "pass"
    assert v["dmarc"]["policy"] == "reject"
    assert v["dmarc"]["aligned"] == {"spf": True, "dkim": True}
    assert v["dmarc"]["domain"] == "supplier.example"
    assert v["arc"]["result"] == "none"
    assert all(part["reason"] for part in (v["spf"], v["dmarc"], v["arc"], *v["dkim"]))


def test_dkim_body_tampered(resolver, keys):
    raw = sign(mail(), "supplier.example", keys["supplier"][0])
    tampered = raw.replace(b"Friday", b"Monday, new IBAN DE00 1234")
    v = check(tampered, resolver)
    assert v["dkim"][0]["result"] == "fail"
    assert "body hash" in v["dkim"][0]["reason"]
    # SPF still vouches for the domain, so DMARC passes on SPF alone.
    assert v["dmarc"]["result"] == "pass" and v["dmarc"]["aligned"] == {"spf": True, "dkim": False}
    # and from a stranger's address nothing vouches
    v = check(tampered, resolver, peer_ip=STRANGER_IP)
    assert (v["spf"]["result"], v["dkim"][0]["result"], v["dmarc"]["result"]) == ("fail", "fail", "fail")


def test_signed_header_changed_fails(resolver, keys):
    raw = sign(mail(), "supplier.example", keys["supplier"][0]).replace(b"Subject: Invoice 42", b"Subject: Invoice 43")
    v = check(raw, resolver, peer_ip=STRANGER_IP)
    assert v["dkim"][0]["result"] == "fail"
    assert v["dmarc"]["result"] == "fail"


def test_spf_fail_with_dmarc_reject(resolver):
    v = check(mail(), resolver, peer_ip=STRANGER_IP)
    assert v["spf"]["result"] == "fail" and v["spf"]["domain"] == "supplier.example"
    assert v["dkim"] == []
    assert v["dmarc"]["result"] == "fail"
    assert v["dmarc"]["policy"] == "reject"
    assert v["dmarc"]["aligned"] == {"spf": False, "dkim": False}
    assert "SPF fail" in v["dmarc"]["reason"] and "no DKIM signature" in v["dmarc"]["reason"]


def test_subdomain_gets_the_sp_policy(resolver):
    v = check(mail("billing@mail.supplier.example"), resolver, peer_ip=STRANGER_IP,
              mail_from="billing@mail.supplier.example")
    assert v["dmarc"]["result"] == "fail"
    assert v["dmarc"]["policy"] == "quarantine"
    assert v["dmarc"]["org_domain"] == "supplier.example"


def _forward_through_list(original: bytes, keys) -> bytes:
    """What a mailing list does: rewrites the subject, adds a footer, records
    its own verdict and seals the result with ARC (i=1)."""
    changed = original.replace(b"Subject: Invoice 42", b"Subject: [ap-list] Invoice 42") + b"--\r\nap-list footer\r\n"
    ar = (b"Authentication-Results: forwarder.example; dkim=pass header.d=supplier.example header.s=sel; "
          b"spf=pass smtp.mailfrom=supplier.example; dmarc=pass header.from=supplier.example\r\n")
    with_ar = ar + changed
    seal = dkim.arc_sign(with_ar, b"arc", b"forwarder.example", keys["forwarder"][0], b"forwarder.example")
    assert seal, "dkimpy produced no ARC set"
    return b"".join(seal) + with_ar


def test_forwarded_mail_with_a_valid_arc_chain(resolver, keys):
    forwarded = _forward_through_list(sign(mail(), "supplier.example", keys["supplier"][0]), keys)
    v = check(forwarded, resolver, peer_ip=FORWARDER_IP, mail_from="ap-list-bounces@forwarder.example",
              helo="lists.forwarder.example")
    assert v["arc"]["result"] == "pass", v["arc"]
    assert v["arc"]["sealers"] == ["forwarder.example"]
    # the list changed the mail: the author's signature breaks, SPF is the list's
    assert v["dkim"][0]["result"] == "fail"
    assert v["spf"] == {"result": "pass", "domain": "forwarder.example", "scope": "mailfrom",
                        "reason": v["spf"]["reason"]}
    assert v["dmarc"]["result"] == "fail"

    # changed after sealing: the chain no longer verifies
    broken = forwarded.replace(b"ap-list footer", b"pay to DE00 9999 instead")
    v = check(broken, resolver, peer_ip=FORWARDER_IP, mail_from="ap-list-bounces@forwarder.example")
    assert v["arc"]["result"] == "fail", v["arc"]

    # ARC fields that are no chain at all
    junk = b"ARC-Seal: junk\r\nARC-Message-Signature: junk\r\nARC-Authentication-Results: junk\r\n" + mail()
    assert check(junk, resolver)["arc"]["result"] == "fail"


def test_forged_authentication_results_claiming_our_id(resolver):
    forged = mail(extra=f"Authentication-Results: {OUR_ID.upper()}; dkim=pass header.d=supplier.example; "
                        "spf=pass smtp.mailfrom=supplier.example; dmarc=pass header.from=supplier.example\r\n")
    assert claims_our_id(forged, OUR_ID)
    assert not claims_our_id(forged, "mx.provider.example")
    assert not claims_our_id(mail(), OUR_ID)
    # a comment before the id does not hide it
    assert claims_our_id(mail(extra=f"Authentication-Results: (relay) {OUR_ID}; none\r\n"), OUR_ID)
    # the verdict is ours: the forged pass changes nothing
    v = check(forged, resolver, peer_ip=STRANGER_IP)
    assert (v["spf"]["result"], v["dkim"], v["dmarc"]["result"]) == ("fail", [], "fail")
    # nor is it taken as an upstream verdict unless its id is trusted and topmost
    assert trusted_upstream(forged, ["mx.provider.example"]) is None


def test_trusted_upstream_reads_the_topmost_field_only():
    provider = ("Authentication-Results: mx.provider.example;\r\n"
                "\tdkim=pass header.i=@supplier.example header.s=sel;\r\n"
                "\tspf=pass (mx.provider.example: domain of billing@supplier.example designates 192.0.2.10)"
                " smtp.mailfrom=billing@supplier.example;\r\n"
                "\tdmarc=pass (p=REJECT sp=QUARANTINE dis=NONE) header.from=supplier.example\r\n")
    forged_below = "Authentication-Results: mx.provider.example; dmarc=fail header.from=supplier.example\r\n"
    raw = mail(extra=provider + forged_below)
    up = trusted_upstream(raw, ["MX.Provider.Example"])
    assert up["authserv_id"] == "mx.provider.example"
    assert up["spf"]["result"] == "pass" and up["spf"]["domain"] == "supplier.example"
    assert up["dkim"] == [{"result": "pass", "domain": "supplier.example", "selector": "sel", "reason": ""}]
    assert up["dmarc"]["result"] == "pass" and up["dmarc"]["policy"] == "reject"
    assert up["dmarc"]["domain"] == "supplier.example"
    assert up["arc"] is None
    assert trusted_upstream(raw, ["other.example"]) is None
    # a forger's field on top hides the provider's: nothing is trusted then
    on_top = mail(extra="Authentication-Results: mx.evil.example; dmarc=pass\r\n" + provider)
    assert trusted_upstream(on_top, ["mx.provider.example"]) is None
    assert trusted_upstream(mail(), ["mx.provider.example"]) is None


def test_dns_timeout_is_temperror_not_an_exception(keys):
    silent = dns_peer.Silent()
    try:
        resolver = Resolver([silent.address], timeout=0.4, budget=0.5)
        raw = sign(mail(), "supplier.example", keys["supplier"][0])
        started = time.monotonic()
        v = check(raw, resolver)
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert v["spf"]["result"] == "temperror"
    assert v["dkim"][0]["result"] == "temperror"
    assert v["dmarc"]["result"] == "temperror"
    assert "time" in v["spf"]["reason"].lower()
    # the per-message budget bounds the wait: three lookups would take 1.2 s
    assert 0.4 <= elapsed < 0.9, elapsed


def test_unanswered_name_is_temperror_while_others_resolve(resolver, keys):
    # NSD refuses names outside its zones: the key of d=supplier.org has no
    # usable answer, while SPF and DMARC of supplier.example resolve.
    raw = sign(mail(), "supplier.org", keys["supplier"][0])
    v = check(raw, resolver)
    assert v["dkim"][0]["result"] == "temperror" and v["dkim"][0]["domain"] == "supplier.org"
    assert v["spf"]["result"] == "pass"
    assert v["dmarc"]["result"] == "pass" and v["dmarc"]["aligned"] == {"spf": True, "dkim": False}


def test_alignment_across_organizational_domains(resolver, keys):
    assert org_domain("mail.supplier.example") == "supplier.example"
    assert org_domain("supplier.example") == "supplier.example"
    assert org_domain("a.example") != org_domain("b.example")
    assert org_domain("ap.example.com") == "example.com"
    assert org_domain("x.y.co.uk") == "y.co.uk"

    # a sub-domain's signature vouches for the organization (relaxed alignment)
    raw = sign(mail(), "mail.supplier.example", keys["supplier"][0])
    v = check(raw, resolver, peer_ip=STRANGER_IP)
    assert v["dkim"][0]["result"] == "pass" and v["dkim"][0]["domain"] == "mail.supplier.example"
    assert v["dmarc"]["result"] == "pass" and v["dmarc"]["aligned"] == {"spf": False, "dkim": True}

    # SPF for a sub-domain aligns too
    v = check(mail(), resolver, peer_ip="192.0.2.11", mail_from="bounce@mail.supplier.example")
    assert v["spf"]["result"] == "pass" and v["dmarc"]["aligned"] == {"spf": True, "dkim": False}

    # another organization's valid signature and SPF pass do not
    raw = sign(mail(), "evil.example", keys["evil"][0])
    v = check(raw, resolver, peer_ip=EVIL_IP, mail_from="billing@evil.example")
    assert v["spf"]["result"] == "pass" and v["dkim"][0]["result"] == "pass"
    assert v["dmarc"]["result"] == "fail"
    assert v["dmarc"]["aligned"] == {"spf": False, "dkim": False}
    assert v["dmarc"]["policy"] == "reject"
    assert "not aligned with supplier.example" in v["dmarc"]["reason"]


def test_strict_alignment(resolver, keys):
    raw = sign(mail("billing@strict.test"), "mail.strict.test", keys["supplier"][0])
    v = check(raw, resolver, peer_ip=STRANGER_IP, mail_from="billing@strict.test")
    assert v["dkim"][0]["result"] == "pass"
    assert v["dmarc"]["result"] == "fail" and v["dmarc"]["policy"] == "quarantine"
    v = check(raw, resolver, mail_from="billing@strict.test")
    assert v["dmarc"]["result"] == "pass" and v["dmarc"]["aligned"] == {"spf": True, "dkim": False}


def test_broken_records_are_permerror(resolver, keys):
    raw = sign(mail("billing@broken.example"), "broken.example", keys["supplier"][0])
    v = check(raw, resolver, mail_from="billing@broken.example")
    assert v["spf"]["result"] == "permerror"
    assert v["dkim"][0]["result"] == "permerror"
    assert v["dmarc"]["result"] == "permerror" and "p=" in v["dmarc"]["reason"]
    # no key published at all
    raw = sign(mail(), "supplier.example", keys["supplier"][0], selector="gone")
    v = check(raw, resolver)
    assert v["dkim"][0]["result"] == "permerror" and "no key" in v["dkim"][0]["reason"]


def test_no_connection_seen_and_no_records(resolver):
    v = check(mail("someone@unknown.test"), resolver, peer_ip=None, mail_from=None)
    assert v["spf"]["result"] == "none" and v["spf"]["reason"]
    assert v["dmarc"]["result"] == "none" and v["dmarc"]["policy"] is None
    v = check(b"Subject: no from\r\n\r\nbody\r\n", resolver)
    assert v["dmarc"]["result"] == "permerror"
    # a null reverse-path is checked on the HELO name
    v = check(mail(), resolver, mail_from="", helo="supplier.example")
    assert v["spf"]["scope"] == "helo" and v["spf"]["result"] == "pass"


# --- the header we write ---------------------------------------------------


def test_authentication_results_header(resolver, keys):
    verdict = verify(sign(mail(), "supplier.example", keys["supplier"][0]), peer_ip=SUPPLIER_IP,
                     helo="mx.supplier.example", mail_from="billing@supplier.example", resolver=resolver)
    value = authentication_results(verdict, OUR_ID)
    assert value.startswith(f"{OUR_ID}; spf=pass ")
    assert "\r" not in value and "\n" not in value
    parsed = parse(value)
    assert parsed["authserv_id"] == OUR_ID
    assert [(r["method"], r["result"]) for r in parsed["results"]] == [
        ("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass"), ("arc", "none")]
    assert parsed["results"][1]["props"] == {"header.d": "supplier.example", "header.s": "sel"}
    assert parsed["results"][2]["props"] == {"policy.dmarc": "reject", "header.from": "supplier.example"}
    folded = authentication_results(verdict, OUR_ID, fold="\r\n\t")
    assert folded.count(";\r\n\t") == 4
    # our own field is recognised as ours once it is on a mail
    assert claims_our_id(f"Authentication-Results: {folded}\r\n".encode() + mail(), OUR_ID)


def test_hostile_values_cannot_inject_clauses():
    verdict = Verdict(
        spf=SpfResult("fail", 'evil.example; dmarc=pass', 'the domain says "pay\r\nhere"; dkim=pass', "mailfrom"),
        dkim=[DkimResult("fail", "a@b;c", "s (x)", "bad")],
        dmarc=DmarcResult("fail", "reject", {"spf": False, "dkim": False}, "supplier.example", "x\\y"),
        arc=ArcResult("none", "no ARC sets"),
    )
    value = authentication_results(verdict, OUR_ID)
    assert "\r" not in value and "\n" not in value
    parsed = parse(value)
    assert [(r["method"], r["result"]) for r in parsed["results"]] == [
        ("spf", "fail"), ("dkim", "fail"), ("dmarc", "fail"), ("arc", "none")]
    assert parsed["results"][0]["props"]["smtp.mailfrom"] == "evil.example; dmarc=pass"
    assert parsed["results"][2]["reason"] == "x\\y"
    with pytest.raises(ValueError):
        authentication_results(verdict, "bad id; dmarc=pass")


# --- resolver --------------------------------------------------------------


def test_nameserver_forms():
    assert parse_nameserver("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    for bad in ("ns.example", "127.0.0.1:0", "127.0.0.1:x", "[::1"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)


def test_warm_cache_answers_without_the_server_and_is_fast(tmp_path, keys):
    if reason := dns_peer.missing():
        pytest.skip(reason)
    server = dns_peer.Nsd.create(tmp_path / "nsd", zones=("example",))
    try:
        server.serve([
            dns_peer.txt("supplier.example.", f"v=spf1 ip4:{SUPPLIER_IP} -all"),
            _key_record("sel._domainkey.supplier.example.", keys["supplier"][1]),
            dns_peer.txt("_dmarc.supplier.example.", "v=DMARC1; p=reject"),
            dns_peer.txt("forwarder.example.", f"v=spf1 ip4:{FORWARDER_IP} -all"),
            _key_record("arc._domainkey.forwarder.example.", keys["forwarder"][1]),
        ])
        resolver = Resolver([server.address], timeout=1.0)
        plain = sign(mail(), "supplier.example", keys["supplier"][0])
        forwarded = _forward_through_list(plain, keys)
        cases = [
            (plain, SUPPLIER_IP, "billing@supplier.example"),
            (forwarded, FORWARDER_IP, "bounces@forwarder.example"),
            (mail("x@sub.supplier.example"), STRANGER_IP, "x@sub.supplier.example"),  # NXDOMAIN paths
        ]
        cold = [check(raw, resolver, peer_ip=ip, mail_from=mf) for raw, ip, mf in cases]
        rounds = 50
        started = time.perf_counter()
        for _ in range(rounds):
            for raw, ip, mf in cases[:1]:
                check(raw, resolver, peer_ip=ip, mail_from=mf)
        per_message = (time.perf_counter() - started) / rounds
        print(f"\nverification with a warm cache: {per_message * 1000:.2f} ms per message (DKIM-signed, SPF, DMARC)")
        server.stop()
        warm = [check(raw, resolver, peer_ip=ip, mail_from=mf) for raw, ip, mf in cases]
    finally:
        server.stop()
    assert cold[0]["dmarc"]["result"] == "pass" and cold[1]["arc"]["result"] == "pass"
    assert cold[2]["dmarc"]["result"] == "fail"
    assert warm == cold  # every answer, negative ones too, came from the cache
    assert per_message < 0.05
