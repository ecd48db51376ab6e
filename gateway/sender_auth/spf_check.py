"""SPF (RFC 7208) with pyspf, through our resolver.

pyspf looks DNS up through its module-level ``spf.DNSLookup``; we replace it once
with a function that asks the resolver of the check running in this thread (a
context variable), so concurrent checks with different resolvers stay apart and
nothing reads /etc/resolv.conf.
"""

from __future__ import annotations

import contextvars
import ipaddress

import spf as pyspf

from gateway.sender_auth.resolver import DnsTemporaryError, Lookups
from gateway.sender_auth.verdict import NONE, PERMERROR, RESULTS, TEMPERROR, SpfResult

_current: contextvars.ContextVar[Lookups | None] = contextvars.ContextVar("spf_lookups", default=None)
_original_lookup = pyspf.DNSLookup

# RFC 7208 4.6.4 leaves a whole-check time limit to the receiver (20 s suggested);
# our per-message DNS budget bounds it instead.


def _lookup(name, qtype, strict=True, timeout=30):
    lookups = _current.get()
    if lookups is None:  # someone else's pyspf use in this process
        return _original_lookup(name, qtype, strict, timeout)
    try:
        records = lookups.lookup(name, qtype, timeout)
    except DnsTemporaryError as e:
        raise pyspf.TempError(f"DNS {e}") from e
    out = []
    for r in records:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), r.address))
        elif qtype == "MX":
            out.append(((name, qtype), (r.preference, r.exchange)))
        elif qtype == "PTR":
            out.append(((name, qtype), r.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            out.append(((name, qtype), r.strings))
    return out


pyspf.DNSLookup = _lookup


def _domain_of(address: str) -> str | None:
    _, at, domain = address.rpartition("@")
    domain = domain.strip().strip(".").lower()
    return domain if at and domain else None


def check_spf(peer_ip: str | None, helo: str | None, mail_from: str | None, lookups: Lookups) -> SpfResult:
    """check_host() for the MAIL FROM identity, or the HELO identity when the
    reverse-path is null (bounces), as RFC 7208 2.4 says."""
    if not peer_ip:
        return SpfResult(NONE, None, "no SMTP connection seen (SPF needs the client's address)")
    try:
        ipaddress.ip_address(peer_ip)
    except ValueError:
        return SpfResult(NONE, None, f"the client's address {peer_ip!r} is not an IP address")
    sender = (mail_from or "").strip().strip("<>").strip()
    helo = (helo or "").strip()
    if sender:
        if "@" not in sender:
            sender = f"postmaster@{sender}"
        scope, domain = "mailfrom", _domain_of(sender)
    elif helo:
        scope, domain, sender = "helo", helo.strip(".").lower(), f"postmaster@{helo}"
    else:
        return SpfResult(NONE, None, "null reverse-path and no HELO name", None)
    if not domain:
        return SpfResult(NONE, None, "no domain to check", scope)
    token = _current.set(lookups)
    try:
        query = pyspf.query(i=peer_ip, s=sender, h=helo or domain, timeout=lookups.timeout)
        result, _code, explanation = query.check()
    except pyspf.TempError as e:  # check() catches these itself; kept for safety
        return SpfResult(TEMPERROR, domain, str(e), scope)
    except pyspf.PermError as e:
        return SpfResult(PERMERROR, domain, str(e), scope)
    finally:
        _current.reset(token)
    result = result.lower()
    if result not in RESULTS:  # pyspf's pre-RFC 7208 words
        result = {"error": TEMPERROR, "unknown": PERMERROR}.get(result, PERMERROR)
    mechanism = getattr(query, "mechanism", None)
    reason = explanation or result
    if mechanism and result not in (TEMPERROR, PERMERROR):
        reason = f"{reason} (matched {mechanism})"
    return SpfResult(result, domain, reason, scope)
