"""`gateway check` tells the truth: it fails for what `serve` would refuse, it
connects to every webhook host (no request), and it creates nothing.

Each case is a real `gateway check` subprocess against a real config file and
real loopback sockets."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

GATEWAY = [sys.executable, "-m", "gateway"]


def write_config(d: Path, *, extra: str = "", processors: str = "", storage: str = "") -> Path:
    cfg = d / "config.toml"
    cfg.write_text(
        f"""
[storage]
database_url = "sqlite+aiosqlite:///var/gateway.db"
root = "var/storage"
{storage}

[smtp]
port = 0

[http]
port = 0

[[organizations]]
name = "acme"

[[queues]]
name = "invoices"
organization = "acme"
addresses = ["invoices@ap.example.com"]
{processors}
{extra}
"""
    )
    return cfg


def check(cfg: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*GATEWAY, "--config", str(cfg), "check", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def rows(p: subprocess.CompletedProcess) -> dict[str, dict]:
    out = [json.loads(line) for line in p.stdout.splitlines()]
    for r in out:
        assert set(r) == {"name", "ok", "detail"} and isinstance(r["ok"], bool), r
    return {r["name"]: r for r in out}


def tree(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))}


def webhook(url: str, **keys: str) -> str:
    more = "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    return f'[[queues.processors]]\ntype = "webhook"\nurl = "{url}"\n{more}'


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Listener:
    """A loopback TCP (or TLS) server that records what clients send."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.tls = tls
        self.received: list[bytes] = []
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.settimeout(5)
            try:
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                self.received.append(data)
            except (OSError, ssl.SSLError):
                self.received.append(b"")
            finally:
                conn.close()

    def wait_for(self, connections: int) -> None:
        # The check may exit before this thread has taken its connection.
        deadline = time.monotonic() + 10
        while len(self.received) < connections and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


# --- creates nothing ------------------------------------------------------------------------------


def test_check_creates_no_storage_root_and_no_database(tmp_path):
    cfg = write_config(tmp_path, processors='[[queues.processors]]\ntype = "folder"\npath = "out/erp"\n')
    before = tree(tmp_path)
    p = check(cfg, "--json")
    assert p.returncode == 0, (p.stdout, p.stderr)
    r = rows(p)
    assert r["storage"]["ok"] and "does not exist yet" in r["storage"]["detail"]
    assert r["database"]["ok"] and "does not exist yet" in r["database"]["detail"]
    assert tree(tmp_path) == before  # no var/, no gateway.db, no out/erp


def test_check_reads_an_existing_sqlite_database_without_touching_it(tmp_path):
    cfg = write_config(tmp_path)
    subprocess.run([*GATEWAY, "--config", str(cfg), "db", "upgrade"], check=True, capture_output=True, timeout=120)
    before = tree(tmp_path)
    assert "var/gateway.db-wal" not in before
    p = check(cfg, "--json")
    assert p.returncode == 0, (p.stdout, p.stderr)
    r = rows(p)
    assert r["database"]["ok"] and r["migrations"]["ok"] and r["migrations"]["detail"].startswith("at ")
    assert tree(tmp_path) == before  # no -wal/-shm, no storage root, the file unchanged


def test_check_fails_for_a_file_that_is_not_a_database(tmp_path):
    cfg = write_config(tmp_path)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "gateway.db").write_bytes(b"not a database\n" * 100)
    p = check(cfg, "--json")
    assert p.returncode == 1
    assert not rows(p)["database"]["ok"], p.stdout


def test_check_fails_without_auto_migrate_and_no_schema(tmp_path):
    # `serve` would create an empty file and then find no tables.
    cfg = write_config(tmp_path, storage="auto_migrate = false")
    p = check(cfg, "--json")
    assert p.returncode == 1
    assert not rows(p)["database"]["ok"] and "gateway db upgrade" in rows(p)["database"]["detail"]
    assert not (tmp_path / "var").exists()


# --- webhooks -------------------------------------------------------------------------------------


def test_missing_secret_file_and_closed_port_are_two_problems(tmp_path):
    port = closed_port()
    cfg = write_config(tmp_path, processors=webhook(f"http://127.0.0.1:{port}/hook", secret_file="hook-secret"))
    p = check(cfg)
    assert p.returncode == 1, (p.stdout, p.stderr)
    failed = [line for line in p.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 2, p.stdout
    assert any("queues.invoices.processors.0.secret_file:" in f and "does not exist" in f for f in failed)
    assert any(f"127.0.0.1:{port}: Connection refused" in f for f in failed)
    assert "2 problem(s)" in p.stderr
    r = rows(check(cfg, "--json"))
    assert not r["queues.invoices.processors.0.secret_file"]["ok"] and not r["queues.invoices.processors.0"]["ok"]


def test_empty_secret_file_fails(tmp_path, listener):
    (tmp_path / "hook-secret").write_text("\n")
    cfg = write_config(tmp_path, processors=webhook(f"http://127.0.0.1:{listener.port}/", secret_file="hook-secret"))
    r = rows(check(cfg, "--json"))
    assert not r["queues.invoices.processors.0.secret_file"]["ok"]
    assert "unsigned" in r["queues.invoices.processors.0.secret_file"]["detail"]


def test_listening_webhook_is_ok_and_gets_no_request(tmp_path, listener):
    (tmp_path / "hook-secret").write_text("s3cret\n")
    cfg = write_config(tmp_path, processors=webhook(f"http://127.0.0.1:{listener.port}/hook", secret_file="hook-secret"))
    p = check(cfg, "--json")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert rows(p)["queues.invoices.processors.0"]["ok"]
    assert rows(p)["queues.invoices.processors.0.secret_file"]["ok"]
    listener.wait_for(1)
    assert listener.accepted == 1 and listener.received == [b""]  # a handshake, no request


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", str(key),
         "-out", str(cert), "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def test_tls_webhook_with_self_signed_cert_fails_verification_unless_trusted(tmp_path, self_signed):
    cert, key = self_signed
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    server = Listener(tls=ctx)
    try:
        cfg = write_config(tmp_path, processors=webhook(f"https://127.0.0.1:{server.port}/hook"))
        p = check(cfg, "--json")
        assert p.returncode == 1, (p.stdout, p.stderr)
        row = rows(p)["queues.invoices.processors.0"]
        assert not row["ok"] and "not trusted" in row["detail"], row
        # SSL_CERT_FILE is how the webhook's HTTP client (httpx) is told to trust it.
        p = check(cfg, "--json", env={"SSL_CERT_FILE": str(cert)})
        assert p.returncode == 0, (p.stdout, p.stderr)
        assert rows(p)["queues.invoices.processors.0"]["ok"]
        server.wait_for(2)
        assert server.received[-1] == b""  # the TLS handshake, then nothing
    finally:
        server.close()


# --- listeners ------------------------------------------------------------------------------------


def test_smtp_port_in_use_fails(tmp_path, listener):
    cfg = write_config(tmp_path, extra="")
    cfg.write_text(cfg.read_text().replace("[smtp]\nport = 0", f"[smtp]\nport = {listener.port}"))
    p = check(cfg, "--json")
    assert p.returncode == 1
    r = rows(p)["smtp"]
    assert not r["ok"] and f"127.0.0.1:{listener.port}" in r["detail"] and "in use" in r["detail"], r


# --- PostgreSQL: the state is read, never upgraded -------------------------------------------------


def test_check_reports_an_empty_postgresql_database_without_migrating_it(tmp_path, db_url):
    if db_url.startswith("sqlite"):
        pytest.skip("the PostgreSQL path")
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("sqlite+aiosqlite:///var/gateway.db", db_url))
    r = rows(check(cfg, "--json"))
    assert r["database"]["ok"] and r["migrations"]["ok"] and "empty database" in r["migrations"]["detail"], r
    cfg.write_text(cfg.read_text().replace('root = "var/storage"', 'root = "var/storage"\nauto_migrate = false'))
    p = check(cfg, "--json")
    assert p.returncode == 1 and not rows(p)["migrations"]["ok"] and "gateway db upgrade" in rows(p)["migrations"]["detail"]

    import asyncio

    import asyncpg

    async def tables():
        conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        finally:
            await conn.close()

    assert asyncio.run(tables()) == []


def test_authentication_nameservers_are_asked(tmp_path):
    """[authentication] nameservers: one that answers (NSD, authoritative for
    another zone: it refuses the root and still counts), one that never does."""
    from tests.peers import dns as dns_peer

    if reason := dns_peer.missing():
        pytest.skip(reason)
    nsd = dns_peer.Nsd.create(tmp_path / "nsd", zones=("example",))
    silent = dns_peer.Silent()
    try:
        nsd.serve([dns_peer.txt("a.example.", "v=spf1 -all")])
        cfg = tmp_path / "auth.toml"
        cfg.write_text(
            f'[storage]\nroot = "storage"\n[smtp]\nenabled = false\n[http]\nenabled = false\n'
            f'[authentication]\nenabled = true\ntimeout = 1.0\nnameservers = ["{nsd.address}", "{silent.address}"]\n'
            '[[organizations]]\nname = "acme"\n[[queues]]\nname = "invoices"\norganization = "acme"\n'
        )
        p = subprocess.run([*GATEWAY, "--config", str(cfg), "check", "--json"], capture_output=True, text=True, timeout=60)
        rows = {r["name"]: r for r in map(json.loads, p.stdout.splitlines())}
        assert rows[f"authentication.{nsd.address}"]["ok"] is True
        assert rows[f"authentication.{silent.address}"]["ok"] is False
        assert p.returncode == 1
    finally:
        silent.close()
        nsd.stop()
