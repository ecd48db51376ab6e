"""Shared fixtures: database backends, settings, a runtime, real servers.

Every test that takes ``db_url`` (directly or through ``settings``/``runtime``) runs
once on SQLite and once on PostgreSQL. PostgreSQL is found at
$GATEWAY_TEST_DATABASE_URL, else at 127.0.0.1:5432 (user postgres, trust auth);
when neither answers, those runs are skipped with the reason, and the summary at
the end of the run says which backends were exercised.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections import Counter
from pathlib import Path

import pytest

from gateway.config import settings_from_dict

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "emails"
# The external corpus (816 real-world messages) lives beside the project in our
# workspace only; a bare clone has no such folder. Tests that read it run when
# it is there and are skipped, saying so, when it is not.
CORPUS = Path(os.environ.get("GATEWAY_TEST_CORPUS") or ROOT.parent / "shared" / "corpus")
CORPUS_SKIP_REASON = (
    f"external corpus {os.environ.get('GATEWAY_TEST_CORPUS') or '../shared/corpus'} not found: corpus tests skipped"
)
requires_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=CORPUS_SKIP_REASON)

_PG_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
_pg_skip_reason: str | None = None


def _pg_admin_url() -> str:
    return os.environ.get("GATEWAY_TEST_DATABASE_URL", _PG_DEFAULT)


def _pg_reachable() -> str | None:
    """None when PostgreSQL answers, else why not."""
    import asyncpg

    url = _pg_admin_url().replace("postgresql+asyncpg://", "postgresql://")

    async def probe():
        conn = await asyncpg.connect(url, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
        return None
    except Exception as e:
        return f"PostgreSQL not reachable at {url}: {type(e).__name__}: {e}"


def pytest_configure(config):
    global _pg_skip_reason
    _pg_skip_reason = _pg_reachable()


@pytest.fixture(autouse=True)
def _fresh_structlog():
    """Each test starts from structlog's defaults: a level filter or renderer set by
    an earlier test in the same worker (configure_logging) must not hide lines
    from a later test's capture_logs()."""
    import structlog

    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database of each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
        return
    if _pg_skip_reason:
        pytest.skip(_pg_skip_reason)
    import asyncpg

    admin = _pg_admin_url().replace("postgresql+asyncpg://", "postgresql://")
    name = f"gwtest_{uuid.uuid4().hex[:12]}"

    async def run(sql):
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    base = _pg_admin_url().rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"


def base_config(db_url: str, tmp_path: Path) -> dict:
    """A config with two organizations and three queues, as tests expect."""
    return {
        "storage": {"database_url": db_url, "root": str(tmp_path / "storage")},
        "smtp": {"enabled": False},
        "http": {"enabled": False},
        "workers": {"enabled": False},
        "logging": {"format": "json", "level": "warning"},
        "organizations": [{"name": "acme"}, {"name": "globex"}],
        "queues": [
            {"name": "invoices", "organization": "acme", "addresses": ["invoices@ap.example.com"]},
            {"name": "receipts", "organization": "acme", "addresses": ["receipts@ap.example.com"]},
            {"name": "orders", "organization": "globex", "addresses": ["orders@globex.example.com"]},
        ],
    }


@pytest.fixture
def make_settings(tmp_path):
    def make(db_url: str, **sections):
        data = base_config(db_url, tmp_path)
        for k, v in sections.items():
            if isinstance(v, dict) and isinstance(data.get(k), dict):
                data[k] = {**data[k], **v}
            else:
                data[k] = v
        return settings_from_dict(data, tmp_path)

    return make


@pytest.fixture
def settings(db_url, make_settings):
    return make_settings(db_url)


@pytest.fixture
async def runtime(settings):
    from gateway.runtime import open_runtime

    async with open_runtime(settings, migrate=True) as rt:
        yield rt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_terminal_summary(terminalreporter):
    """Say which database backends the run exercised (works under xdist too)."""
    counts: Counter = Counter()
    for outcome in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(outcome, []):
            if getattr(rep, "when", "call") not in ("call", "setup"):
                continue
            if outcome != "skipped" and rep.when == "setup":
                continue
            nodeid = getattr(rep, "nodeid", "")
            for backend in ("sqlite", "postgresql"):
                if f"[{backend}" in nodeid or f"-{backend}]" in nodeid or f"-{backend}-" in nodeid:
                    counts[(backend, outcome)] += 1
    if not counts:
        return
    terminalreporter.write_sep("-", "database backends exercised")
    for backend in ("sqlite", "postgresql"):
        row = ", ".join(f"{counts[(backend, o)]} {o}" for o in ("passed", "failed", "error", "skipped") if counts[(backend, o)])
        terminalreporter.write_line(f"{backend}: {row or 'not run'}")
    if _pg_skip_reason:
        terminalreporter.write_line(f"PostgreSQL tests SKIPPED: {_pg_skip_reason}")
