"""The ingest pipeline: named steps from raw bytes to committed rows.

    verify → parse (with the part ledger) → route → policy → store → sender → commit → notify

Verify to store are CPU, DNS and file work; they run off the event loop, in a
helper process or a worker thread (``gateway.preparer``), one after the other
over one ``MailContext``. ``sender`` (``gateway.sender_check``: each queue's
known senders), ``commit`` (``gateway.commit``, all rows
in one transaction, after the blobs are durable) and ``notify`` (wake the
workers, ``gateway.queue.wakeup``) run in the daemon's process.

A new step is a function ``step(ctx, env)`` put into ``PREPARE_STEPS`` at its
place: a sender verdict goes after ``route`` and marks plans ``reviewing``
from ``policy`` on; an archive opener extends the documents after ``parse``.
Steps must be picklable module-level functions (helpers import this module).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from gateway import parse
from gateway.policy import DocPlan, plan_mail
from gateway.routing import Route

if TYPE_CHECKING:
    from gateway.preparer import Preparer


@dataclass
class MailContext:
    """What the steps know about one mail; what the commit writes."""

    raw: bytes
    rcpt_to: list[str]
    queues: list[str] | None  # forced queues (replay --queue, HTTP): no routing by address
    source: str = ""  # smtp | imap | http | replay
    sender: tuple[str | None, str | None, str | None] = (None, None, None)  # peer, HELO, MAIL FROM
    raw_size: int = 0  # of the message as stored (with our Authentication-Results)
    parsed: parse.ParsedMail | None = None
    routes: list[Route] = field(default_factory=list)
    plans: dict[str, list[DocPlan]] = field(default_factory=dict)  # per queue name
    raw_sha: str = ""
    docs: list[tuple[parse.ParsedDocument, str]] = field(default_factory=list)  # with sha256
    unsynced: bool = False  # blobs written by a helper, to be flushed by the parent
    # The sender step's (gateway.sender_check): our verdict, stored with the
    # email, and senders to learn as known, (queue, domain, display name, address).
    authentication: dict | None = None
    learn: list[tuple[str, str, str, str]] = field(default_factory=list)


Step = Callable[[MailContext, "Preparer"], None]


def verify_step(ctx: MailContext, env: "Preparer") -> None:
    """Our sender verdict and its header on top of the message ([authentication])."""
    if env.verifier is not None:
        ctx.authentication = env.verifier.verify(ctx.raw, ctx.source, *ctx.sender)
        ctx.raw = env.verifier.stamp(ctx.raw, ctx.authentication)


def parse_step(ctx: MailContext, env: "Preparer") -> None:
    ctx.parsed = parse.parse_message(ctx.raw, max_depth=env.max_depth)


def route_step(ctx: MailContext, env: "Preparer") -> None:
    """Raises NoRoute before anything is written."""
    ctx.routes = env.routes(ctx.parsed, ctx.rcpt_to, ctx.queues)


def policy_step(ctx: MailContext, env: "Preparer") -> None:
    ctx.plans = {r.queue: plan_mail(ctx.parsed.documents, env.policy(r.queue)) for r in ctx.routes}


def store_step(ctx: MailContext, env: "Preparer") -> None:
    """The raw message and every document, content-addressed. Durable only
    after the commit step's flush (see ``storage.blobs``)."""
    sync = env.sync_blobs
    ctx.raw_size = len(ctx.raw)
    ctx.raw_sha = env.blobs.put_sync(ctx.raw, sync=sync)
    ctx.docs = [(d, env.blobs.put_sync(d.data, sync=sync)) for d in ctx.parsed.documents]


PREPARE_STEPS: tuple[Step, ...] = (verify_step, parse_step, route_step, policy_step, store_step)
