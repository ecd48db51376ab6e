"""Per queue: what a sender's verdict means for its mail (``[queues.sender_policy]``).

Pure: the verdict (``gateway.sender_auth``), the From address, the queue's
policy and its known senders in; a decision out. Order:

1. ``deny`` patterns: a failure, whatever the verdict.
2. ``allow`` patterns: accepted, no further check.
3. The domain owner's DMARC policy: a DMARC ``fail`` under ``p=quarantine`` or
   ``p=reject`` is a failure, whatever ``require`` says.
4. ``require``: ``spf_or_dkim`` wants an SPF or DKIM pass, ``dmarc`` a DMARC
   pass. A ``temperror`` (DNS trouble) is never a reject: held for review.
5. Look-alikes of known senders (``gateway.lookalike``): held for review.

A failure's action is ``on_failure``: ``review``, ``reject`` or ``accept``.
"""

from __future__ import annotations

import email.utils
import fnmatch
from dataclasses import dataclass

from gateway import lookalike

PASS, TEMPERROR = "pass", "temperror"


@dataclass(frozen=True)
class Decision:
    action: str  # accept | review | reject
    reason: str | None = None
    verified: bool = False  # the From domain is authenticated: may be learned as known


def evaluate(verdict: dict | None, from_header: str | None, policy, known: lookalike.KnownSenders | None) -> Decision:
    name, address = email.utils.parseaddr(from_header or "")
    address = address.lower()
    domain = address.rpartition("@")[2]
    verified = _verified(verdict, domain)
    if _matches(policy.deny, address, domain):
        return _fail(policy, f"sender_denied: {address or '(no From address)'} matches the queue's deny list")
    if _matches(policy.allow, address, domain):
        return Decision("accept", None, verified)
    if verdict is not None:
        dmarc = verdict.get("dmarc") or {}
        if dmarc.get("result") == "fail" and dmarc.get("policy") in ("quarantine", "reject"):
            return _fail(policy, f"sender_auth: dmarc=fail under the domain's p={dmarc.get('policy')} ({dmarc.get('reason')})")
        failure = _requirement(verdict, policy.require)
        if failure == TEMPERROR:
            return Decision("review", f"sender_auth: temperror: {policy.require} could not be checked (DNS)", False)
        if failure:
            return _fail(policy, f"sender_auth: {failure}")
    if policy.lookalike and known is not None and address:
        finding = lookalike.check(from_header, name or None, known)
        if finding is not None:
            return Decision("review", f"{finding.reason}: {finding.detail}", False)
    return Decision("accept", None, verified)


def _fail(policy, reason: str) -> Decision:
    if policy.on_failure == "accept":
        return Decision("accept", None, False)
    return Decision(policy.on_failure, reason, False)


def _requirement(verdict: dict, require: str) -> str | None:
    """None when met; "temperror" when DNS trouble kept it from being checked;
    else why it was not met."""
    spf = (verdict.get("spf") or {}).get("result")
    dkim = [d.get("result") for d in verdict.get("dkim") or []]
    dmarc = (verdict.get("dmarc") or {}).get("result")
    if require == "spf_or_dkim":
        if spf == PASS or PASS in dkim:
            return None
        if spf == TEMPERROR or TEMPERROR in dkim:
            return TEMPERROR
        return f"neither SPF ({spf}) nor DKIM ({', '.join(dkim) or 'no signature'}) passed"
    if require == "dmarc":
        if dmarc == PASS:
            return None
        if dmarc == TEMPERROR:
            return TEMPERROR
        return f"dmarc={dmarc} ({(verdict.get('dmarc') or {}).get('reason')})"
    return None


def _verified(verdict: dict | None, domain: str) -> bool:
    """The From domain itself is authenticated: DMARC passed, or (no DMARC
    record) a DKIM signature of the same organization passed."""
    if verdict is None or not domain:
        return False
    dmarc = verdict.get("dmarc") or {}
    if dmarc.get("result") == PASS:
        return True
    if dmarc.get("result") != "none":
        return False
    try:
        org = lookalike.org_domain(domain)
        return any(
            d.get("result") == PASS and d.get("domain") and lookalike.org_domain(d["domain"]) == org
            for d in verdict.get("dkim") or []
        )
    except ValueError:
        return False


def _matches(patterns: list[str], address: str, domain: str) -> bool:
    for p in patterns:
        target = address if "@" in p else domain
        if target and fnmatch.fnmatchcase(target, p):
            return True
    return False
