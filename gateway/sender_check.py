"""The ingest's sender step: our verdict on who sent a mail, and what each
queue's ``sender_policy`` makes of it.

Runs in the daemon's process around the prepare steps (it needs DNS and the
queues' known senders, which the helpers do not have):

* ``verify`` (before prepare): SPF for the connection (SMTP only), DKIM, DMARC,
  ARC, in a worker thread (``gateway.sender_auth`` is synchronous; threads keep
  SMTP sessions verifying side by side), and our ``Authentication-Results``
  header for the top of the stored message. For IMAP and replay the topmost
  upstream header of a trusted authserv-id gives SPF and DMARC.
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


class SenderCheck:
    def __init__(self, settings, sessions) -> None:
        auth = settings.authentication
        self.enabled = auth.enabled
        self.sessions = sessions
        self.authserv_id = auth.authserv_id or settings.smtp.hostname
        self.trusted = [t.lower() for t in auth.trusted_authserv_ids if t.lower() != self.authserv_id.lower()]
        self.policies = {q.name: q.sender_policy for q in settings.queues}
        self._known: dict[str, tuple[float, lookalike.KnownSenders]] = {}
        self.resolver = None
        if self.enabled:
            servers = auth.nameservers or dns.resolver.Resolver().nameservers
            self.resolver = Resolver(servers, timeout=auth.timeout, cache_size=auth.cache_size, budget=auth.budget)

    # --- verify ---------------------------------------------------------------------

    async def verify(self, raw: bytes, source: str, envelope) -> dict | None:
        if not self.enabled:
            return None
        return await asyncio.to_thread(self._verify, raw, source, envelope)

    def _verify(self, raw: bytes, source: str, envelope) -> dict:
        started = time.perf_counter()
        smtp = source == "smtp"
        verdict = verify(
            raw,
            peer_ip=envelope.peer if smtp else None,
            helo=envelope.helo if smtp else None,
            mail_from=envelope.mail_from if smtp else None,
            resolver=self.resolver,
        ).as_dict()
        if not smtp and self.trusted:
            upstream = trusted_upstream(raw, self.trusted)
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
