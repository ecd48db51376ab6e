"""The ingest's sender step: our verdict on who sent a mail, and what each
queue's ``sender_policy`` makes of it.

Two halves:

* ``verify`` (``SenderVerifier``, the first prepare step, where the parse runs:
  a helper process or a thread): SPF for the connection (SMTP only), DKIM,
  DMARC, ARC, and our ``Authentication-Results`` header for the top of the
  stored message. For IMAP and replay the topmost upstream header of a trusted
  authserv-id gives SPF and DMARC. In the daemon's own threads the RSA checks
  competed with the event loop for the GIL (bench/README.md).
* ``decide`` (after prepare): per route, accept, hold every task in
  ``reviewing`` with the reason, or reject (``SenderRejected``: SMTP 550 5.7.1
  when every route rejects; otherwise that upload's tasks are recorded as
  ``discarded``). Verified senders of accepted mail are learned per queue, for
  the look-alike check.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from dataclasses import dataclass

import dns.resolver

from gateway import lookalike
from gateway.errors import PermanentError
from gateway.observability import get_logger
from gateway.pipeline import MailContext
from gateway.sender_auth import Resolver, Verdict, authentication_results, claims_our_id, trusted_upstream, verify
from gateway.sender_policy import Decision, evaluate

log = get_logger()

# Known senders are read again from the database at most this often per queue.
_KNOWN_TTL = 30.0


class SenderRejected(PermanentError):
    """Every queue the mail is for refuses its sender (SMTP 550 5.7.1)."""


@dataclass(frozen=True)
class AuthConfig:
    """What verification needs, picklable for the parser helpers."""

    authserv_id: str
    nameservers: tuple[str, ...]
    timeout: float
    budget: float | None
    cache_size: int
    trusted: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings) -> "AuthConfig | None":
        auth = settings.authentication
        if not auth.enabled:
            return None
        authserv_id = auth.authserv_id or settings.smtp.hostname
        return cls(
            authserv_id=authserv_id,
            nameservers=tuple(auth.nameservers or dns.resolver.Resolver().nameservers),
            timeout=auth.timeout,
            budget=auth.budget,
            cache_size=auth.cache_size,
            trusted=tuple(t.lower() for t in auth.trusted_authserv_ids if t.lower() != authserv_id.lower()),
        )


class SenderVerifier:
    """The verify step: runs where the parse runs (a helper process: its CPU,
    mostly DKIM's RSA check and body hashing, is then not the daemon's), with
    a DNS cache per process."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.authserv_id = config.authserv_id
        self.resolver = Resolver(list(config.nameservers), timeout=config.timeout,
                                 cache_size=config.cache_size, budget=config.budget)

    def verify(self, raw: bytes, source: str, peer: str | None, helo: str | None, mail_from: str | None) -> dict:
        started = time.perf_counter()
        smtp = source == "smtp"
        verdict = verify(
            raw,
            peer_ip=peer if smtp else None,
            helo=helo if smtp else None,
            mail_from=mail_from if smtp else None,
            resolver=self.resolver,
        ).as_dict()
        if not smtp and self.config.trusted:
            upstream = trusted_upstream(raw, list(self.config.trusted))
            if upstream:
                # SPF needs the connection we did not see; DMARC builds on it.
                for key in ("spf", "dmarc"):
                    if upstream.get(key):
                        verdict[key] = {**upstream[key], "reason": f"from {upstream['authserv_id']}: "
                                        + str(upstream[key].get("reason") or "")}
                verdict["upstream"] = upstream["authserv_id"]
        if claims_our_id(raw, self.authserv_id):
            verdict["ignored"] = f"inbound Authentication-Results claiming {self.authserv_id} ignored"
        verdict["authserv_id"] = self.authserv_id
        verdict["seconds"] = round(time.perf_counter() - started, 4)
        return verdict

    def stamp(self, raw: bytes, verdict: dict | None) -> bytes:
        """The message with our Authentication-Results on top, as an MTA adds
        its trace fields (the fingerprint ignores it: a re-delivery is still one)."""
        if verdict is None:
            return raw
        nl = b"\r\n" if raw[: raw.find(b"\n") + 1].endswith(b"\r\n") else b"\n"
        value = authentication_results(Verdict.from_dict(verdict), self.authserv_id, fold=(nl + b"\t").decode())
        return b"Authentication-Results: " + value.encode("ascii", "replace") + nl + raw


class SenderCheck:
    """The sender step, in the daemon: each route's sender policy."""

    def __init__(self, settings, sessions) -> None:
        self.sessions = sessions
        self.policies = {q.name: q.sender_policy for q in settings.queues}
        self._known: dict[str, tuple[float, lookalike.KnownSenders]] = {}

    # --- decide ---------------------------------------------------------------------

    async def decide(self, ctx: MailContext, source: str) -> None:
        """Apply each route's sender policy to its plans (see the module doc)."""
        if not ctx.routes:
            return
        verdict = ctx.authentication
        decisions: dict[str, Decision] = {}
        for route in ctx.routes:
            policy = self.policies.get(route.queue)
            if policy is None:
                continue
            known = await self._known_senders(route.queue) if policy.lookalike and verdict is not None else None
            decisions[route.queue] = evaluate(verdict, ctx.parsed.from_addr, policy, known)
        rejecting = [q for q, d in decisions.items() if d.action == "reject"]
        if rejecting and len(rejecting) == len(ctx.routes) and source == "smtp":
            raise SenderRejected(decisions[rejecting[0]].reason or "sender refused")
        for queue, d in decisions.items():
            if d.action == "accept":
                if d.verified:
                    identity = _sender_identity(ctx.parsed.from_addr)
                    cached = self._known.get(queue)
                    if cached is None or identity[0] not in cached[1].domains or (
                        identity[1] and (identity[1], identity[0]) not in cached[1].names
                    ):
                        ctx.learn.append((queue, *identity))
                continue
            status = "reviewing" if d.action == "review" else "discarded"
            reason = d.reason if d.action == "review" else f"rejected: {d.reason}"
            for p in ctx.plans.get(queue, []):
                if p.task:
                    p.status, p.reason = status, reason
            log.info("ingest.sender_held" if d.action == "review" else "ingest.sender_rejected",
                     queue=queue, reason=d.reason, message_id=ctx.parsed.message_id)

    async def _known_senders(self, queue: str) -> lookalike.KnownSenders:
        now = time.monotonic()
        cached = self._known.get(queue)
        if cached and now - cached[0] < _KNOWN_TTL:
            return cached[1]
        from gateway.storage.known_senders import load

        rows = await load(self.sessions, queue)
        known = await asyncio.to_thread(
            lambda: lookalike.KnownSenders(
                domains=[d for d, _, _ in rows], names=[(n, a or d) for d, n, a in rows if n]
            )
        )
        self._known[queue] = (now, known)
        return known

    def learned(self, ctx: MailContext) -> None:
        """New known senders were committed: read them again next time."""
        for queue, *_ in ctx.learn:
            self._known.pop(queue, None)


def _sender_identity(from_header: str | None) -> tuple[str, str, str]:
    name, address = email.utils.parseaddr(from_header or "")
    address = address.lower()
    try:
        domain = lookalike.org_domain(address.rpartition("@")[2])
    except ValueError:
        domain = address.rpartition("@")[2]
    return domain, name.strip(), address
