"""DKIM (RFC 6376) and ARC (RFC 8617) with dkimpy, through our resolver.

dkimpy answers a bare True/False and logs why; it turns a DNS failure into
``False`` itself. So each verification gets its own DNS function, which notes
any temporary failure, and its own logger, which keeps dkimpy's reasons: from
those the result word is chosen (a DNS failure is ``temperror`` whatever dkimpy
concluded; a missing or broken key, a malformed or expired signature are
``permerror``; a body or header hash that does not match is ``fail``).
"""

from __future__ import annotations

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from gateway.sender_auth.resolver import DnsTemporaryError, Lookups
from gateway.sender_auth.verdict import FAIL, NONE, PASS, PERMERROR, TEMPERROR, ArcResult, DkimResult

MIN_KEY_BITS = 1024  # RFC 8301: smaller RSA keys are not to be trusted


class _Reasons:
    """A logger for dkimpy that keeps its warnings and errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def debug(self, *args, **kwargs) -> None:
        pass

    info = debug

    def warning(self, msg, *args, **kwargs) -> None:
        try:
            self.errors.append(str(msg) % args if args else str(msg))
        except (TypeError, ValueError):
            self.errors.append(str(msg))

    error = exception = critical = warning


def _dns_function(lookups: Lookups, trouble: list[str]):
    """dkimpy's ``dnsfunc(name, timeout)``: the key record's TXT, None if absent."""

    def txt(name, timeout=5):
        if isinstance(name, bytes):
            try:
                name = name.decode("ascii")
            except UnicodeDecodeError:
                return None  # not a name the DNS can hold
        try:
            records = lookups.txt(name.rstrip("."), timeout)
        except DnsTemporaryError as e:
            trouble.append(str(e))
            raise dkim.DnsTimeoutError(str(e)) from e
        # Several TXT records at a key name: prefer one that looks like a key.
        keys = [r for r in records if b"p=" in r]
        return (keys or records or [None])[0]

    return txt


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    return value.decode("ascii", "replace").strip().lower() or None


def head(raw: bytes) -> bytes:
    """The header block of a raw message (all of it when there is no body)."""
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return raw[: min(ends)] if ends else raw


def _signature_headers(message: dkim.DomainSigner) -> list[bytes]:
    return [value for name, value in message.headers if name.lower() == b"dkim-signature"]


def check_dkim(raw: bytes, lookups: Lookups) -> list[DkimResult]:
    """One result per DKIM-Signature header, topmost first; [] when unsigned."""
    if b"dkim-signature" not in head(raw).lower():
        return []
    reasons = _Reasons()
    try:
        message = dkim.DKIM(raw, logger=reasons, minkey=MIN_KEY_BITS, timeout=lookups.timeout)
    except dkim.DKIMException as e:
        return [DkimResult(PERMERROR, None, None, f"message cannot be parsed for DKIM: {e}")]
    results = []
    for idx, header in enumerate(_signature_headers(message)):
        results.append(_verify_one(message, idx, header, lookups))
    return results


def _verify_one(message: dkim.DKIM, idx: int, header: bytes, lookups: Lookups) -> DkimResult:
    try:
        tags = parse_tag_value(header)
    except InvalidTagValueList as e:
        return DkimResult(PERMERROR, None, None, f"malformed signature: {e}")
    domain, selector = _text(tags.get(b"d")), _text(tags.get(b"s"))
    reasons = _Reasons()
    message.logger = reasons
    trouble: list[str] = []
    try:
        ok = message.verify(idx, dnsfunc=_dns_function(lookups, trouble))
    except dkim.ValidationError as e:
        if trouble:
            return DkimResult(TEMPERROR, domain, selector, trouble[0])
        word = FAIL if "body hash mismatch" in str(e) else PERMERROR
        reason = "body hash mismatch (the body was changed after signing)" if word == FAIL else str(e)
        return DkimResult(word, domain, selector, reason)
    except dkim.DKIMException as e:
        if trouble:
            return DkimResult(TEMPERROR, domain, selector, trouble[0])
        return DkimResult(PERMERROR, domain, selector, str(e) or type(e).__name__)
    except Exception as e:  # a library fault on odd input must not lose the message
        if trouble:
            return DkimResult(TEMPERROR, domain, selector, trouble[0])
        return DkimResult(PERMERROR, domain, selector, f"verifier error: {type(e).__name__}: {e}")
    if trouble:
        return DkimResult(TEMPERROR, domain, selector, trouble[0])
    if ok:
        return DkimResult(PASS, domain, selector, f"signature verified ({message.keysize}-bit key)")
    for error in reasons.errors:
        if "missing public key" in error:
            return DkimResult(PERMERROR, domain, selector, f"no key published at {selector}._domainkey.{domain}")
    if reasons.errors:
        return DkimResult(PERMERROR, domain, selector, reasons.errors[0])
    return DkimResult(FAIL, domain, selector, "signature did not verify (signed headers changed, or another key)")


def check_arc(raw: bytes, lookups: Lookups) -> ArcResult:
    """The ARC chain's validation status (RFC 8617 5.2): none, pass or fail
    (temperror when a key could not be fetched)."""
    headers = head(raw).lower()
    if b"arc-seal" not in headers and b"arc-message-signature" not in headers:
        return ArcResult(NONE, "no ARC sets")
    reasons = _Reasons()
    trouble: list[str] = []
    try:
        arc = dkim.ARC(raw, logger=reasons, minkey=MIN_KEY_BITS, timeout=lookups.timeout)
        cv, sets, why = arc.verify(dnsfunc=_dns_function(lookups, trouble))
    except Exception as e:  # dkimpy's own errors and faults on odd input alike
        if trouble:
            return ArcResult(TEMPERROR, trouble[0])
        return ArcResult(FAIL, f"ARC chain cannot be verified: {type(e).__name__}: {e}")
    sealers = [_text(s.get("as-domain")) or "" for s in reversed(sets)]
    if trouble:
        return ArcResult(TEMPERROR, trouble[0], sealers)
    if cv == dkim.CV_Pass:
        return ArcResult(PASS, f"chain of {len(sets)} ARC set(s) verified", sealers)
    if cv == dkim.CV_None:  # ARC fields are there (checked above) but no instance is
        return ArcResult(FAIL, "ARC header fields without a valid instance (i=)", sealers)
    return ArcResult(FAIL, why or "ARC chain did not verify", sealers)
