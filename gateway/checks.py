"""`gateway check`: validate the config and try every connection it names.

Each check yields ``CheckResult`` rows; the command prints them all and exits
non-zero if any failed, so an operator sees every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Callable

from gateway.config import Settings
from gateway.errors import GatewayError
from gateway.storage import db
from gateway.storage.blobs import LocalBlobStore


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


async def check_storage(settings: Settings) -> AsyncIterator[CheckResult]:
    blobs = LocalBlobStore(settings.storage.root)
    try:
        await blobs.check()
        yield CheckResult("storage", True, f"{blobs.root} is writable")
    except GatewayError as e:
        yield CheckResult("storage", False, str(e))


async def check_database(settings: Settings) -> AsyncIterator[CheckResult]:
    engine = db.create_engine(settings.storage.database_url)
    try:
        try:
            await db.ping(engine)
        except GatewayError as e:
            yield CheckResult("database", False, str(e))
            return
        yield CheckResult("database", True, "reachable")
        current, heads = await db.migration_state(engine)
        if current == heads:
            yield CheckResult("migrations", True, f"at {', '.join(sorted(heads))}")
        elif not current and settings.storage.auto_migrate:
            yield CheckResult("migrations", True, "empty database; `serve` will create the schema (auto_migrate)")
        else:
            missing = ", ".join(sorted(heads - current)) or "?"
            yield CheckResult(
                "migrations",
                settings.storage.auto_migrate,
                f"database at {', '.join(sorted(current)) or 'nothing'}, code at {', '.join(sorted(heads))}"
                f" (missing {missing}); run `gateway db upgrade`",
            )
    finally:
        await engine.dispose()


async def check_processors(settings: Settings) -> AsyncIterator[CheckResult]:
    for q in settings.queues:
        for i, p in enumerate(q.processors):
            name = f"queues.{q.name}.processors.{i}"
            if p.type == "folder":
                path = p.path
                parent = next((a for a in [path, *path.parents] if a.exists()), None)
                import os

                ok = parent is not None and os.access(parent, os.W_OK)
                yield CheckResult(name, ok, f"folder {path} {'writable' if ok else 'not writable'}")
            elif p.type == "webhook":
                yield CheckResult(name, True, f"webhook {p.url}")
            elif p.type == "command":
                import shutil

                exe = shutil.which(p.argv[0])
                yield CheckResult(name, exe is not None, f"command {p.argv[0]} {'found at ' + exe if exe else 'not found'}")


async def check_imap(settings: Settings) -> AsyncIterator[CheckResult]:
    """Log in to every [[imap]] account; folder and message counts, or the exact error."""
    if not settings.imap:
        return
    import asyncio

    from gateway.ingress.imap import check_account

    results = await asyncio.gather(*(check_account(a) for a in settings.imap))
    for account, (ok, detail) in zip(settings.imap, results):
        yield CheckResult(f"imap.{account.name}", ok, detail)


async def check_smtp(settings: Settings) -> AsyncIterator[CheckResult]:
    """The TLS certificate and key load (a bad pair would stop `serve` at start)."""
    s = settings.smtp
    if not s.enabled:
        return
    where = f"listens on {s.host}:{s.port} as {s.hostname}"
    if s.tls_cert is None:
        yield CheckResult("smtp", True, f"{where}; no tls_cert, STARTTLS not offered")
        return
    import ssl

    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(s.tls_cert), str(s.tls_key))
    except (OSError, ssl.SSLError) as e:
        yield CheckResult("smtp", False, f"cannot load tls_cert {s.tls_cert} with tls_key {s.tls_key}: {e}")
        return
    yield CheckResult("smtp", True, f"{where}; STARTTLS {'required' if s.require_tls else 'offered'}")


CHECKS: list[Callable[[Settings], AsyncIterator[CheckResult]]] = [
    check_storage,
    check_database,
    check_processors,
    check_imap,
    check_smtp,
]


async def run_checks(settings: Settings) -> list[CheckResult]:
    results = [CheckResult("config", True, f"{settings.source} is valid")]
    for check in CHECKS:
        try:
            async for r in check(settings):
                results.append(r)
        except Exception as e:  # one broken check must not hide the others
            results.append(CheckResult(check.__name__, False, f"{type(e).__name__}: {e}"))
    return results
