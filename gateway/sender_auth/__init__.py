"""Sender authentication: SPF, DKIM, DMARC and ARC verdicts that are ours.

    resolver = Resolver(["127.0.0.1:5353"], timeout=2.0)
    verdict = verify(raw, peer_ip="192.0.2.1", helo="mx.supplier.example",
                     mail_from="billing@supplier.example", resolver=resolver)
    verdict.as_dict()        # stored per email as "authentication"
    authentication_results(verdict, "gateway.example.com")   # the header value we write

Modules: ``resolver`` (DNS: configured nameservers, time-outs, cache),
``spf_check`` (pyspf), ``signatures`` (DKIM and ARC with dkimpy), ``dmarc``
(RFC 7489, organizational domains), ``headers`` (Authentication-Results written
and read), ``verdict`` (the result shape), ``verify`` (all of it for one message).
"""

from gateway.sender_auth.dmarc import org_domain
from gateway.sender_auth.headers import authentication_results, claims_our_id, trusted_upstream
from gateway.sender_auth.resolver import DnsTemporaryError, Resolver
from gateway.sender_auth.verdict import ArcResult, DkimResult, DmarcResult, SpfResult, Verdict
from gateway.sender_auth.verify import verify

__all__ = [
    "ArcResult",
    "DkimResult",
    "DmarcResult",
    "DnsTemporaryError",
    "Resolver",
    "SpfResult",
    "Verdict",
    "authentication_results",
    "claims_our_id",
    "org_domain",
    "trusted_upstream",
    "verify",
]
