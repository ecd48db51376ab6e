"""`gateway check`: validate the config and try every connection it names.

Each check yields ``CheckResult`` rows; the command prints them all and exits
non-zero if any failed, so an operator sees every problem at once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable
from urllib.parse import urlsplit

from gateway.config import Settings, StorageSettings
from gateway.errors import GatewayError
from gateway.storage import db

# A webhook host that takes longer than this to accept a connection is reported
# as unreachable; the check must answer, not wait for each webhook's own timeout.
CONNECT_TIMEOUT = 5.0


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def _nearest_existing(path: Path) -> Path | None:
    return next((a for a in [path, *path.parents] if a.exists()), None)


def _creatable_dir(path: Path) -> tuple[bool, str]:
    """Whether ``serve`` could use (or make) the folder ``path``, looking only:
    a check that creates what it checks would hide the very problem it looks for."""
    if path.is_dir():
        if os.access(path, os.W_OK | os.X_OK):
            return True, f"{path} is writable"
        return False, f"{path} is not writable"
    if path.exists():
        return False, f"{path} exists and is not a folder"
    parent = _nearest_existing(path.parent)
    if parent is None or not parent.is_dir():
        return False, f"{path} cannot be created: {parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return False, f"{path} cannot be created: {parent} is not writable"
    return True, f"{path} does not exist yet; `serve` creates it in {parent}"


async def check_storage(settings: Settings) -> AsyncIterator[CheckResult]:
    root = Path(settings.storage.root).resolve()
    ok, detail = _creatable_dir(root)
    if ok and root.is_dir():
        # What `serve` writes into: an unwritable blobs/ or tmp/ inside a writable root
        # (a restore done as root) fails the first ingest, not the start.
        for sub in ("blobs", "tmp"):
            if (root / sub).exists():
                sub_ok, sub_detail = _creatable_dir(root / sub)
                if not sub_ok:
                    ok, detail = False, sub_detail
    yield CheckResult("storage", ok, f"storage root {detail}")


def _sqlite_state(path: str) -> tuple[set[str], set[str]]:
    """The migration state of an existing SQLite file, opened read-only: ``mode=ro``
    never creates the file, and nothing here writes to it."""
    from sqlalchemy import create_engine as create_sync_engine
    from sqlalchemy.pool import NullPool

    file = Path(path).resolve()
    # A WAL database opened read-only still makes its -wal and -shm files when they
    # are missing; with none there (no daemon has it open), "immutable" reads
    # the file alone and creates nothing.
    live = file.with_name(file.name + "-wal").exists()
    uri = file.as_uri() + ("?mode=ro" if live else "?mode=ro&immutable=1")
    engine = create_sync_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return db._current_sync(conn)
    finally:
        engine.dispose()


def _migration_rows(storage: StorageSettings, current: set[str], heads: set[str]) -> CheckResult:
    if current == heads:
        return CheckResult("migrations", True, f"at {', '.join(sorted(heads))}")
    if not current and storage.auto_migrate:
        return CheckResult("migrations", True, "empty database; `serve` will create the schema (auto_migrate)")
    missing = ", ".join(sorted(heads - current)) or "?"
    where = f"database at {', '.join(sorted(current)) or 'nothing'}, code at {', '.join(sorted(heads))} (missing {missing})"
    if storage.auto_migrate:
        return CheckResult("migrations", True, f"{where}; `serve` will upgrade it (auto_migrate)")
    return CheckResult("migrations", False, f"{where}; run `gateway db upgrade`")


async def _check_sqlite(settings: Settings) -> AsyncIterator[CheckResult]:
    storage = settings.storage
    path = db.sqlite_path(storage.database_url)
    if not path or path == ":memory:":
        yield CheckResult("database", True, "in memory")
        return
    file = Path(path)
    folder_ok, folder_detail = _creatable_dir(file.parent)
    if not folder_ok:
        # SQLite writes its -wal and -shm files beside the database.
        yield CheckResult("database", False, f"database folder {folder_detail}")
        return
    if not file.exists():
        if storage.auto_migrate:
            yield CheckResult("database", True, f"{file} does not exist yet; `serve` creates it (auto_migrate)")
        else:
            yield CheckResult("database", False, f"{file} does not exist and auto_migrate is off: run `gateway db upgrade`")
        return
    if not os.access(file, os.R_OK | os.W_OK):
        yield CheckResult("database", False, f"{file} is not readable and writable")
        return
    try:
        current, heads = await asyncio.to_thread(_sqlite_state, path)
    except Exception as e:  # not a database, locked, unreadable
        yield CheckResult("database", False, f"cannot read {file}: {db._short(e)}")
        return
    yield CheckResult("database", True, f"{file} opens")
    yield _migration_rows(storage, current, heads)


async def check_database(settings: Settings) -> AsyncIterator[CheckResult]:
    if db.is_sqlite(settings.storage.database_url):
        async for r in _check_sqlite(settings):
            yield r
        return
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    # Not db.create_engine: asyncpg's connect would wait 60 s for a host that
    # drops packets.
    engine = create_async_engine(settings.storage.database_url, poolclass=NullPool,
                                 connect_args={"timeout": CONNECT_TIMEOUT})
    try:
        try:
            await db.ping(engine)
        except GatewayError as e:
            yield CheckResult("database", False, str(e))
            return
        yield CheckResult("database", True, "reachable")
        # Read only: the state is reported, never upgraded.
        current, heads = await db.migration_state(engine)
        yield _migration_rows(settings.storage, current, heads)
    finally:
        await engine.dispose()


def _webhook_secret(p) -> str | None:
    """Why the webhook processor would not start (or would not sign), or None."""
    if p.secret is not None or p.secret_file is None:
        return None
    try:
        secret = p.secret_file.read_text().strip()
    except FileNotFoundError:
        return f"secret_file {p.secret_file} does not exist (`serve` would not start)"
    except UnicodeDecodeError:
        return f"secret_file {p.secret_file} is not UTF-8 text (`serve` would not start)"
    except OSError as e:
        return f"secret_file {p.secret_file} cannot be read: {e.strerror or e} (`serve` would not start)"
    if not secret:
        return f"secret_file {p.secret_file} is empty: webhooks would be sent unsigned"
    return None


async def _connect(url: str, timeout: float) -> str | None:
    """Open a TCP (and for https a verified TLS) connection to the URL's host and
    close it again, sending no request; None when that worked, else why not."""
    import httpx

    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return f"{url} names no host"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return f"{url} has an invalid port"
    ctx = None
    if parts.scheme == "https":
        # The context the webhook processor's client gets (httpx: certifi, or
        # SSL_CERT_FILE / SSL_CERT_DIR), so the check trusts what the POST will.
        ctx = await asyncio.to_thread(httpx.create_ssl_context)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=host if ctx else None), timeout
        )
    except asyncio.TimeoutError:
        return f"no connection to {host}:{port} within {timeout:g} s"
    except ssl.SSLCertVerificationError as e:
        return f"TLS certificate of {host}:{port} not trusted: {e.verify_message}"
    except ssl.SSLError as e:
        return f"TLS with {host}:{port} failed: {e.reason or e}"
    except OSError as e:
        # asyncio's own text ("Connect call failed ...") hides the reason.
        return f"cannot connect to {host}:{port}: {os.strerror(e.errno) if e.errno else e}"
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 2)
    except (OSError, asyncio.TimeoutError, ssl.SSLError):
        pass
    return None


async def _check_webhook(name: str, p) -> list[CheckResult]:
    rows = []
    if p.secret_file is not None and p.secret is None:
        why = _webhook_secret(p)
        rows.append(CheckResult(f"{name}.secret_file", why is None, why or f"{p.secret_file} is readable"))
    why = await _connect(p.url, min(CONNECT_TIMEOUT, p.timeout))
    rows.append(CheckResult(name, why is None, f"webhook {p.url}: {why or 'the host accepts connections'}"))
    return rows


async def check_processors(settings: Settings) -> AsyncIterator[CheckResult]:
    webhooks = []
    for q in settings.queues:
        for i, p in enumerate(q.processors):
            name = f"queues.{q.name}.processors.{i}"
            if p.type == "folder":
                ok, detail = _creatable_dir(Path(p.path))
                yield CheckResult(name, ok, f"folder {detail}")
            elif p.type == "webhook":
                webhooks.append((name, p))
            elif p.type == "command":
                exe = shutil.which(p.argv[0])
                yield CheckResult(name, exe is not None, f"command {p.argv[0]} {'found at ' + exe if exe else 'not found'}")
    # All at once: several unreachable hosts cost one timeout, not one each.
    for rows in await asyncio.gather(*(_check_webhook(n, p) for n, p in webhooks)):
        for r in rows:
            yield r


async def _can_listen(host: str, port: int) -> str | None:
    """Bind as `serve` would and let go at once; None when the address is free."""
    if port == 0:
        return None
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(asyncio.Protocol, host=host, port=port, reuse_address=True)
    except OSError as e:
        return f"cannot listen on {host}:{port}: {e.strerror or e}"
    server.close()
    await server.wait_closed()
    return None


async def check_http(settings: Settings) -> AsyncIterator[CheckResult]:
    h = settings.http
    if not h.enabled:
        return
    if why := await _can_listen(h.host, h.port):
        yield CheckResult("http", False, f"{why} (a running `gateway serve` holds it too)")
        return
    yield CheckResult("http", True, f"can listen on {h.host}:{h.port}")


async def check_imap(settings: Settings) -> AsyncIterator[CheckResult]:
    """Log in to every [[imap]] account; folder and message counts, or the exact error."""
    if not settings.imap:
        return
    from gateway.ingress.imap import check_account

    results = await asyncio.gather(*(check_account(a) for a in settings.imap))
    for account, (ok, detail) in zip(settings.imap, results):
        yield CheckResult(f"imap.{account.name}", ok, detail)


async def check_smtp(settings: Settings) -> AsyncIterator[CheckResult]:
    """The port can be bound and the TLS certificate and key load: either would
    stop `serve` at start."""
    s = settings.smtp
    if not s.enabled:
        return
    problems = []
    if why := await _can_listen(s.host, s.port):
        problems.append(f"{why} (a running `gateway serve` holds it too)")
    if s.tls_cert is not None:
        try:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(s.tls_cert), str(s.tls_key))
        except (OSError, ssl.SSLError) as e:
            problems.append(f"cannot load tls_cert {s.tls_cert} with tls_key {s.tls_key}: {e}")
    if problems:
        yield CheckResult("smtp", False, "; ".join(problems))
        return
    tls = "no tls_cert, STARTTLS not offered" if s.tls_cert is None else f"STARTTLS {'required' if s.require_tls else 'offered'}"
    yield CheckResult("smtp", True, f"can listen on {s.host}:{s.port} as {s.hostname}; {tls}")


async def check_authentication(settings: Settings) -> AsyncIterator[CheckResult]:
    """Each nameserver [authentication] names answers a DNS query (any answer:
    an authoritative-only server refuses the root and still counts). With
    none answering, every verdict would be temperror."""
    a = settings.authentication
    if not a.enabled:
        return
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    from gateway.sender_auth.resolver import parse_nameserver
    from gateway.sender_check import AuthConfig

    for server in AuthConfig.from_settings(settings).nameservers:
        name = f"authentication.{server}"
        try:
            host, port = parse_nameserver(server)
        except ValueError as e:
            yield CheckResult(name, False, str(e))
            continue
        query = dns.message.make_query(".", "SOA")
        try:
            reply = await asyncio.to_thread(dns.query.udp, query, host, timeout=min(a.timeout, CONNECT_TIMEOUT), port=port)
        except (dns.exception.DNSException, OSError) as e:
            yield CheckResult(name, False, f"does not answer DNS queries: {type(e).__name__}: {e}")
            continue
        yield CheckResult(name, True, f"answers DNS queries ({dns.rcode.to_text(reply.rcode())} for the root)")


CHECKS: list[Callable[[Settings], AsyncIterator[CheckResult]]] = [
    check_storage,
    check_database,
    check_processors,
    check_imap,
    check_smtp,
    check_http,
    check_authentication,
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
