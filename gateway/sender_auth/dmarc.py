"""DMARC (RFC 7489): the From domain's policy and whether SPF or DKIM vouch for it.

Organizational domains come from the Public Suffix List (the publicsuffixlist
package ships it, nothing is fetched). The reserved TLDs of RFC 2606 and RFC
6761 (``example``, ``test``, ``invalid``, ``localhost``) count as public
suffixes, so ``a.example`` and ``b.example`` are different organizations and
``mail.supplier.example`` belongs to ``supplier.example``.
"""

from __future__ import annotations

import re
from email.utils import getaddresses

from gateway.public_suffix import registrable
from gateway.sender_auth.resolver import DnsTemporaryError, Lookups
from gateway.sender_auth.verdict import (
    FAIL,
    NONE,
    PASS,
    PERMERROR,
    TEMPERROR,
    DkimResult,
    DmarcResult,
    SpfResult,
)

POLICIES = ("none", "quarantine", "reject")

_DMARC_RECORD = re.compile(r"\s*v\s*=\s*DMARC1\s*(;|$)", re.IGNORECASE)


def normalize_domain(domain: str | None) -> str | None:
    """Lower-case A-label form without the root dot; None if it is no domain."""
    if not domain:
        return None
    domain = domain.strip().strip(".").lower()
    if not domain or any(not label for label in domain.split(".")):
        return None
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return domain


def org_domain(domain: str) -> str:
    """The organizational domain (RFC 7489 3.2): the public suffix plus one label."""
    name = domain.lower().strip(".")
    return registrable(name) or name


def aligned(identifier: str | None, from_domain: str, mode: str) -> bool:
    """Identifier alignment: ``s`` strict (the same name), ``r`` relaxed (the same
    organizational domain)."""
    identifier = normalize_domain(identifier)
    if identifier is None:
        return False
    if mode == "s":
        return identifier == from_domain
    return org_domain(identifier) == org_domain(from_domain)


def from_domain(from_values: list[str]) -> tuple[str | None, str]:
    """The RFC5322.From domain, or None with the reason it cannot be had."""
    if not from_values:
        return None, "no From header"
    if len(from_values) > 1:
        return None, "several From headers"
    addresses = [a for _, a in getaddresses(from_values) if a]
    domains = {normalize_domain(a.rpartition("@")[2]) if "@" in a else None for a in addresses}
    if not domains:
        return None, "no address in From"
    if None in domains:
        return None, "a From address without a valid domain"
    if len(domains) > 1:
        return None, "From addresses in several domains"
    return domains.pop(), ""


def parse_record(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"not a tag=value pair: {part[:40]!r}")
        tags.setdefault(key.strip().lower(), value.strip())
    return tags


def _discover(lookups: Lookups, domain: str, org: str) -> tuple[str | None, str | None, str]:
    """(record text, the domain it was found at, reason) per RFC 7489 6.6.3."""
    for at in (domain, org) if org != domain else (domain,):
        texts = [t.decode("utf-8", "replace") for t in lookups.txt(f"_dmarc.{at}")]
        records = [t for t in texts if _DMARC_RECORD.match(t)]
        if len(records) > 1:
            return None, at, f"several DMARC records at _dmarc.{at}"
        if records:
            return records[0], at, ""
    return None, None, f"no DMARC record for {domain}" + (f" or {org}" if org != domain else "")


def check_dmarc(from_values: list[str], spf: SpfResult, dkim: list[DkimResult], lookups: Lookups) -> DmarcResult:
    none_aligned = {"spf": False, "dkim": False}
    domain, why = from_domain(from_values)
    if domain is None:
        return DmarcResult(PERMERROR, None, none_aligned, None, why)
    org = org_domain(domain)
    try:
        record, found_at, why = _discover(lookups, domain, org)
    except DnsTemporaryError as e:
        return DmarcResult(TEMPERROR, None, none_aligned, domain, f"DMARC record lookup failed: {e}", org)
    if record is None:
        return DmarcResult(NONE, None, none_aligned, domain, why, org)
    try:
        tags = parse_record(record)
    except ValueError as e:
        return DmarcResult(PERMERROR, None, none_aligned, domain, f"malformed DMARC record at _dmarc.{found_at}: {e}", org)
    p, sp = tags.get("p", "").lower(), tags.get("sp", "").lower()
    if p not in POLICIES:
        return DmarcResult(
            PERMERROR, None, none_aligned, domain, f"DMARC record at _dmarc.{found_at} has no valid p= tag", org
        )
    policy = sp if found_at != domain and sp in POLICIES else p
    adkim = "s" if tags.get("adkim", "r").lower() == "s" else "r"
    aspf = "s" if tags.get("aspf", "r").lower() == "s" else "r"
    pct_text = tags.get("pct", "100")
    pct = int(pct_text) if pct_text.isdigit() and int(pct_text) <= 100 else 100

    dkim_ok = [d for d in dkim if d.result == PASS and aligned(d.domain, domain, adkim)]
    spf_ok = spf.result == PASS and aligned(spf.domain, domain, aspf)
    flags = {"spf": spf_ok, "dkim": bool(dkim_ok)}
    mode = {"r": "relaxed", "s": "strict"}
    if dkim_ok or spf_ok:
        parts = []
        if dkim_ok:
            parts.append(f"DKIM d={dkim_ok[0].domain} ({mode[adkim]})")
        if spf_ok:
            parts.append(f"SPF {spf.domain} ({mode[aspf]})")
        return DmarcResult(PASS, policy, flags, domain, "aligned: " + ", ".join(parts), org, pct)

    temporary = [d for d in dkim if d.result == TEMPERROR and aligned(d.domain, domain, adkim)]
    if temporary or (spf.result == TEMPERROR and aligned(spf.domain, domain, aspf)):
        return DmarcResult(
            TEMPERROR, policy, flags, domain, "no aligned pass, and an aligned check failed temporarily", org, pct
        )
    return DmarcResult(FAIL, policy, flags, domain, _why_not(domain, spf, dkim), org, pct)


def _why_not(domain: str, spf: SpfResult, dkim: list[DkimResult]) -> str:
    parts = []
    if spf.result == PASS:
        parts.append(f"SPF passed for {spf.domain}, not aligned with {domain}")
    else:
        parts.append(f"SPF {spf.result}" + (f" for {spf.domain}" if spf.domain else ""))
    passed = [d for d in dkim if d.result == PASS]
    if passed:
        parts.append("DKIM passed for " + ", ".join(f"d={d.domain}" for d in passed) + f", not aligned with {domain}")
    elif dkim:
        parts.append("DKIM " + ", ".join(f"{d.result} for d={d.domain}" for d in dkim))
    else:
        parts.append("no DKIM signature")
    return "; ".join(parts)
