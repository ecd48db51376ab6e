"""verify(): the whole verdict on one message; synchronous, pure but for DNS.

It blocks on DNS, so an async ingress runs it in a thread
(``await asyncio.to_thread(verify, raw, ...)``); the resolver and its cache are
shared by all threads. It never raises for anything a message or the DNS can do:
DNS failures are ``temperror``, broken records and signatures ``permerror``.
"""

from __future__ import annotations

from gateway.sender_auth.dmarc import check_dmarc
from gateway.sender_auth.headers import header_fields
from gateway.sender_auth.resolver import Resolver
from gateway.sender_auth.signatures import check_arc, check_dkim
from gateway.sender_auth.spf_check import check_spf
from gateway.sender_auth.verdict import Verdict


def verify(
    raw: bytes,
    *,
    peer_ip: str | None,
    helo: str | None,
    mail_from: str | None,
    resolver: Resolver,
) -> Verdict:
    """SPF for the connecting address and MAIL FROM (HELO for a null sender),
    every DKIM signature, DMARC for the From domain, and the ARC chain.

    ``peer_ip`` None (IMAP, replay: no connection seen) gives SPF ``none``;
    DMARC can then pass on an aligned DKIM signature only."""
    lookups = resolver.for_message()
    spf = check_spf(peer_ip, helo, mail_from, lookups)
    dkim = check_dkim(raw, lookups)
    from_values = [v for n, v in header_fields(raw) if n.lower() == "from"]
    dmarc = check_dmarc(from_values, spf, dkim, lookups)
    arc = check_arc(raw, lookups)
    return Verdict(spf=spf, dkim=dkim, dmarc=dmarc, arc=arc)
