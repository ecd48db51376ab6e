"""SMTP ingest benchmark: the gateway against a raw aiosmtpd server, in one run.

    .venv/bin/python bench/smtp_ingest.py [--seconds 6] [--database-url URL]

Starts two servers as subprocesses on free ports:

* raw     — aiosmtpd's SMTP class with a handler whose handle_DATA returns 250 and
            does nothing (the ceiling: protocol cost only);
* gateway — `gateway serve` with only [smtp] enabled: every message is parsed,
            its blobs written and fsynced, and its rows committed (SQLite,
            synchronous=FULL, by default) before the 250.

Then, for 2 KB plain messages and 200 KB messages with a PDF attachment, at 1 and
16 concurrent connections, a client in this process sends messages for a fixed
time (each one unique, so no deduplication shortcut and every blob is written)
and records throughput and the latency from the DATA command to the 250 after the
data. It prints one table with the ratio gateway/raw. Not a test: numbers depend
on the machine and on what else runs on it.

With ``--authentication`` it also starts a real authoritative DNS server (NSD,
``tests/peers/dns.py``) serving SPF (127.0.0.1), a DKIM key and DMARC ``p=reject``
for supplier.example, and a second gateway with ``[authentication]`` enabled
against it (its queue's sender_policy requires DMARC and rejects, so a mail that
did not verify shows as an error). Every message is then DKIM-signed: each cell
first signs a pool of messages (tokens substituted, then signed; timed and
printed, outside the measured time) which the raw server and both gateways are
sent, and each cell runs raw, gateway (verification off), gateway (verification
on). The warm-up fills the gateway's DNS cache (the records' TTL is an hour).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and its other scripts
# (queue.py) would shadow standard modules of the same name.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import asyncio
import base64
import os
import socket
import statistics
import subprocess
import tempfile
import time
from email.message import EmailMessage

ROOT = Path(__file__).resolve().parent.parent
RCPT = "invoices@ap.example.com"
MAIL_FROM = "billing@supplier.example"  # the From domain: SPF and DMARC are about it
DKIM_SELECTOR = "bench"
DKIM_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]
TOKEN = b"TOKENTOKENTOKENTOKENTOKEN0000000"  # replaced per message (32 bytes)


# --- the raw server ------------------------------------------------------------------


def raw_server(port: int) -> None:
    from aiosmtpd.smtp import SMTP

    class NoOp:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(NoOp(), hostname="raw.bench", data_size_limit=50 * 2**20, loop=loop),
            "127.0.0.1",
            port,
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --- messages ------------------------------------------------------------------------


def template(kind: str) -> bytes:
    """A message with TOKEN in its Message-ID, body and (for pdf) attachment."""
    msg = EmailMessage()
    msg["From"] = "Supplier <billing@supplier.example>"
    msg["To"] = RCPT
    msg["Subject"] = "Invoice " + TOKEN.decode()
    msg["Message-ID"] = f"<{TOKEN.decode()}@bench.example>"
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
    if kind == "2KB":
        line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n"
        msg.set_content(TOKEN.decode() + "\n" + line * 24)
    else:
        msg.set_content("Please find the invoice " + TOKEN.decode() + " attached.\n")
        # A PDF-shaped 150 KB attachment (base64: about 200 KB); the token in it
        # makes every attachment a different blob.
        body = b"%PDF-1.4\n%" + TOKEN + b"\n" + os.urandom(150_000) + b"\n%%EOF\n"
        msg.add_attachment(body, maintype="application", subtype="pdf", filename="invoice.pdf")
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    if kind != "2KB":
        # The token inside the base64 text, so that replacing it changes the PDF.
        b64 = base64.b64encode(b"%PDF-1.4\n%" + TOKEN)
        raw = raw.replace(b64[12:44], TOKEN, 1)
    assert b"\r\n." not in raw  # no dot-stuffing needed
    return raw


class Messages:
    def __init__(self, kind: str) -> None:
        self.raw = template(kind)
        self.n = 0
        self.prefix = os.urandom(4).hex().upper()

    def token(self, n: int) -> bytes:
        return f"{self.prefix}{n:024d}".encode()

    def next(self) -> bytes:
        self.n += 1
        return self.raw.replace(TOKEN, self.token(self.n))


def _sign_range(raw: bytes, prefix: str, first: int, count: int, private: bytes) -> list[bytes]:
    """The DKIM-Signature fields of messages first..first+count-1 (tokens
    substituted as ``Messages`` does, then signed with dkimpy)."""
    import dkim

    out = []
    for n in range(first, first + count):
        message = raw.replace(TOKEN, f"{prefix}{n:024d}".encode())
        out.append(dkim.sign(message, DKIM_SELECTOR.encode(), b"supplier.example", private,
                             canonicalize=(b"relaxed", b"relaxed"), include_headers=DKIM_HEADERS))
    return out


class SignedPool:
    """``size`` messages of one kind, DKIM-signed before the measured part.

    Signing is done up front (in a process per CPU); what is kept per message is
    its DKIM-Signature field, and ``next`` builds the message as ``Messages``
    does (the token substituted into the template) with the field on top, so the
    client's per-message work is the same as in the unsigned bench. ``view()``
    hands the pool out from its start: once per gateway (each has its own
    database, so the same messages are new to both); ``cyclic`` (the raw server,
    which stores nothing) starts over at the end, otherwise ``next`` answers
    None once the pool is spent and the cell ends there."""

    def __init__(self, kind: str, size: int, private: bytes) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.msgs = Messages(kind)
        self.size = size
        started = time.perf_counter()
        workers = max(1, os.cpu_count() or 1)
        step = -(-size // (workers * 4))
        ranges = [(n, min(step, size + 1 - n)) for n in range(1, size + 1, step)]
        with ProcessPoolExecutor(workers) as ex:
            parts = ex.map(_sign_range, *zip(*((self.msgs.raw, self.msgs.prefix, a, c, private) for a, c in ranges)))
            self.headers = [h for part in parts for h in part]
        assert len(self.headers) == size
        self.seconds = time.perf_counter() - started

    def view(self, cyclic: bool = False) -> "_PoolView":
        return _PoolView(self, cyclic)


class _PoolView:
    def __init__(self, pool: SignedPool, cyclic: bool) -> None:
        self.pool, self.cyclic = pool, cyclic
        self.n = 0
        self.exhausted = False

    def next(self) -> bytes | None:
        i = self.n % self.pool.size if self.cyclic else self.n
        if i >= self.pool.size:
            self.exhausted = True
            return None
        self.n += 1
        return self.pool.headers[i] + self.pool.msgs.raw.replace(TOKEN, self.pool.msgs.token(i + 1))


# --- the client ----------------------------------------------------------------------


async def _reply(r: asyncio.StreamReader) -> int:
    while True:
        line = await r.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return int(line[:3])


async def _connect(port):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    await _reply(r)
    w.write(b"EHLO bench.client\r\n")
    await _reply(r)
    return r, w


async def _session(port, msgs: Messages, measure_from, stop_at, lat, errors):
    r, w = await _connect(port)
    done = 0
    while time.perf_counter() < stop_at:
        raw = msgs.next()
        if raw is None:  # a signed pool is spent: the cell ends here
            break
        w.write(b"MAIL FROM:<" + MAIL_FROM.encode() + b">\r\nRCPT TO:<" + RCPT.encode() + b">\r\n")
        code = await _reply(r)
        if code == 421:
            # The server's max_messages_per_connection: reconnect, as an MTA does.
            w.close()
            r, w = await _connect(port)
            continue
        if code != 250 or await _reply(r) != 250:
            errors.append("envelope")
            continue
        t0 = time.perf_counter()
        w.write(b"DATA\r\n")
        if await _reply(r) != 354:
            errors.append("data")
            continue
        w.write(raw)
        w.write(b".\r\n")
        await w.drain()
        code = await _reply(r)
        t1 = time.perf_counter()
        if code != 250:
            errors.append(str(code))
        elif t0 >= measure_from:
            lat.append(t1 - t0)
            done += 1
    w.write(b"QUIT\r\n")
    try:
        await _reply(r)
    except ConnectionError:
        pass
    w.close()
    return done


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, its threads and its live child
    processes (the gateway's parser helpers); Linux /proc, else NaN."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, ValueError, IndexError):
        return float("nan")
    return total + sum(cpu_seconds(int(c)) for c in children if Path(f"/proc/{c}").exists())


async def run_cell(port: int, kind: str, conns: int, seconds: float, warmup: float, pid: int,
                   msgs=None, dns_pid: int | None = None) -> dict:
    msgs = msgs or Messages(kind)
    lat: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    cpu0 = cpu_seconds(pid)
    dns0 = cpu_seconds(dns_pid) if dns_pid else float("nan")
    measure_from = start + warmup
    stop_at = measure_from + seconds
    await asyncio.gather(*(_session(port, msgs, measure_from, stop_at, lat, errors) for _ in range(conns)))
    elapsed = time.perf_counter() - measure_from
    # Server CPU per message, warm-up included (over every message it answered).
    cpu = (cpu_seconds(pid) - cpu0) / max(1, msgs.n) * 1000
    dns_cpu = (cpu_seconds(dns_pid) - dns0) * 1000 if dns_pid else float("nan")
    lat.sort()
    return {
        "measured_s": elapsed,
        "pool_exhausted": getattr(msgs, "exhausted", False),
        "dns_cpu_ms": dns_cpu,
        "msgs": len(lat),
        "rate": len(lat) / elapsed,
        "p50": statistics.median(lat) * 1000 if lat else float("nan"),
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan"),
        "errors": len(errors),
        "cpu": cpu,
    }


# --- set-up ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen on {port}")


def gateway_config(d: Path, port: int, database_url: str | None, nameserver: str | None = None) -> Path:
    """The gateway's config in ``d``; with ``nameserver``, [authentication] on
    against it and the queue requiring a DMARC pass (reject otherwise)."""
    d.mkdir(parents=True, exist_ok=True)
    db = database_url or f"sqlite+aiosqlite:///{d / 'gateway.db'}"
    cfg = d / "config.toml"
    auth = policy = ""
    if nameserver:
        auth = f"""
[authentication]
enabled = true
nameservers = ["{nameserver}"]
"""
        policy = """
[queues.sender_policy]
require = "dmarc"
on_failure = "reject"
"""
    cfg.write_text(
        f"""
[storage]
database_url = "{db}"
root = "storage"

[smtp]
host = "127.0.0.1"
port = {port}
hostname = "gateway.bench"
max_connections_per_peer = 100

[http]
enabled = false

[workers]
enabled = false

[logging]
format = "json"
level = "info"

[[organizations]]
name = "acme"

[[queues]]
name = "invoices"
organization = "acme"
addresses = ["{RCPT}"]
{policy}{auth}"""
    )
    return cfg


# Signed messages each cell's pool is sized for: about the gateway's best rate on
# this machine (msg/s, verification off) times the cell's warm-up + measured time.
# A spent pool ends the cell early (said in its line); --pool overrides.
POOL_RATE = {("2KB", 1): 500, ("2KB", 16): 1300, ("200KB", 1): 150, ("200KB", 16): 260}


def _keypair() -> tuple[bytes, str]:
    """(PKCS#1 PEM private key for dkimpy, base64 public key for the p= tag), as
    tests/test_sender_auth.py makes them: RSA 2048 with openssl."""
    private = subprocess.run(["openssl", "genrsa", "-traditional", "2048"], capture_output=True, check=True).stdout
    public = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=private,
                            capture_output=True, check=True).stdout
    return private, base64.b64encode(public).decode()


def start_dns(d: Path, public: str):
    """NSD on loopback (tests/peers/dns.py) serving supplier.example's SPF, DKIM
    key and DMARC records, with an hour's TTL so the cache stays warm all run."""
    sys.path.insert(0, str(ROOT))
    from tests.peers import dns as dns_peer

    if reason := dns_peer.missing():
        sys.exit(f"--authentication: {reason}")
    server = dns_peer.Nsd.create(d, zones=("example",))
    records = [
        dns_peer.txt("supplier.example.", "v=spf1 ip4:127.0.0.1 -all"),
        dns_peer.txt(f"{DKIM_SELECTOR}._domainkey.supplier.example.", f"v=DKIM1; k=rsa; p={public}"),
        dns_peer.txt("_dmarc.supplier.example.", "v=DMARC1; p=reject"),
    ]
    server.serve([r.replace(" 300 IN ", " 3600 IN ", 1) for r in records])
    return server


def start_gateway(d: Path, port: int, database_url: str | None, nameserver: str | None = None):
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(gateway_config(d, port, database_url, nameserver)), "serve"],
        cwd=ROOT,
        stdout=(d / "gateway.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


def stored_verdicts(db: Path) -> list[tuple[str, int]]:
    """How many emails the verifying gateway stored, by verdict (so a run where
    the checks did not pass, or did not run, is seen)."""
    import sqlite3

    with sqlite3.connect(db) as c:
        return c.execute(
            "SELECT coalesce(json_extract(authentication, '$.spf.result'), '-') || '/' ||"
            " coalesce(json_extract(authentication, '$.dkim[0].result'), '-') || '/' ||"
            " coalesce(json_extract(authentication, '$.dmarc.result'), '-') AS v, count(*)"
            " FROM emails GROUP BY v ORDER BY 2 DESC"
        ).fetchall()


def _line(kind, conns, name, r) -> None:
    extra = ""
    if r.get("pool_exhausted"):
        extra += f"  (signed pool spent: measured {r['measured_s']:.1f} s)"
    if r.get("dns_cpu_ms") == r.get("dns_cpu_ms"):  # not NaN
        extra += f"  DNS server CPU {r['dns_cpu_ms']:.0f} ms"
    print(f"  {kind:>5} x{conns:<2} {name:<7} {r['rate']:8.1f} msg/s "
          f"p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms"
          f"  server CPU {r['cpu']:5.2f} ms/msg  errors {r['errors']}{extra}",
          file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="measured time per cell (default 6)")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured time before each cell")
    ap.add_argument("--database-url", help="gateway database (default: SQLite in a temp folder)")
    ap.add_argument("--sizes", default="2KB,200KB", help="message kinds to run (default 2KB,200KB)")
    ap.add_argument("--conns", default="1,16", help="concurrent connections to run (default 1,16)")
    ap.add_argument("--authentication", action="store_true",
                    help="DKIM-signed messages; each cell also against a gateway with [authentication] "
                         "enabled (a real NSD serving SPF, DKIM and DMARC records)")
    ap.add_argument("--pool", type=int, help="signed messages per cell with --authentication "
                                             "(default: a guess of the gateway's rate x the cell's time)")
    ap.add_argument("--raw-server", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_server:
        raw_server(args.raw_server)
        return
    if args.authentication and args.database_url:
        # The two gateways are sent the same signed messages: they need a database each.
        sys.exit("--authentication runs two gateways, each on its own SQLite database: no --database-url")

    with tempfile.TemporaryDirectory(prefix="smtp-bench-") as tmp:
        d = Path(tmp)
        raw_port, gw_port = free_port(), free_port()
        raw = subprocess.Popen([sys.executable, __file__, "--raw-server", str(raw_port)])
        gw = start_gateway(d, gw_port, args.database_url)
        procs = [gw, raw]
        nsd = gw_auth = private = None
        try:
            if args.authentication:
                private, public = _keypair()
                nsd = start_dns(d / "nsd", public)
                auth_port = free_port()
                gw_auth = start_gateway(d / "auth", auth_port, None, nsd.address)
                procs.insert(0, gw_auth)
            wait_listening(raw_port, raw, "raw aiosmtpd")
            wait_listening(gw_port, gw, "gateway serve")
            if gw_auth is not None:
                wait_listening(auth_port, gw_auth, "gateway serve (authentication)")
            rows = []
            for kind in args.sizes.split(","):
                for conns in (int(c) for c in args.conns.split(",")):
                    res = {}
                    servers = [("raw", raw_port, raw.pid), ("gateway", gw_port, gw.pid)]
                    pool = None
                    if gw_auth is not None:
                        servers.append(("gw+auth", auth_port, gw_auth.pid))
                        size = args.pool or int(POOL_RATE.get((kind, conns), 1300) * (args.warmup + args.seconds))
                        pool = SignedPool(kind, size, private)
                        print(f"  {kind:>5} x{conns:<2} signed {size} messages in {pool.seconds:.1f} s "
                              f"({pool.seconds / size * 1000 * (os.cpu_count() or 1):.1f} ms CPU each, "
                              f"{os.cpu_count()} processes; not measured)", file=sys.stderr, flush=True)
                    for name, port, pid in servers:
                        msgs = pool.view(cyclic=name == "raw") if pool else None
                        dns_pid = nsd.process.pid if nsd is not None and name == "gw+auth" else None
                        res[name] = asyncio.run(
                            run_cell(port, kind, conns, args.seconds, args.warmup, pid, msgs, dns_pid))
                        _line(kind, conns, name, res[name])
                    rows.append((kind, conns, res["raw"], res["gateway"], res.get("gw+auth")))
                    pool = None
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            if nsd is not None:
                nsd.stop()
        verdicts = stored_verdicts(d / "auth" / "gateway.db") if gw_auth is not None else None

    db = "PostgreSQL" if args.database_url else "SQLite (synchronous=FULL)"
    print(f"\nSMTP ingest, {args.seconds:g} s per cell, gateway on {db}, {os.cpu_count()} CPUs\n")
    if args.authentication:
        print("Messages DKIM-signed (RSA 2048, relaxed/relaxed); gateway = verification off, "
              "on = [authentication] enabled (SPF, DKIM, DMARC, ARC; DNS cache warm).\n")
        print(
            "| message | conns | raw msg/s | gateway off msg/s | gateway on msg/s | on/off | off/raw | on/raw "
            "| p99 ms raw / off / on | p99 on/off | server CPU ms/msg raw / off / on |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for kind, conns, r, g, a in rows:
            print(
                f"| {kind} | {conns} | {r['rate']:.0f} | {g['rate']:.0f} | {a['rate']:.0f} "
                f"| **{a['rate'] / g['rate']:.2f}x** | {g['rate'] / r['rate']:.2f}x | {a['rate'] / r['rate']:.2f}x "
                f"| {r['p99']:.1f} / {g['p99']:.1f} / {a['p99']:.1f} | {a['p99'] / g['p99']:.2f}x "
                f"| {r['cpu']:.2f} / {g['cpu']:.2f} / {a['cpu']:.2f} |"
            )
    else:
        print(
            "| message | conns | raw msg/s | gateway msg/s | ratio | raw p50/p99 ms | gateway p50/p99 ms "
            "| p99 ratio | server CPU ms/msg raw / gateway |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for kind, conns, r, g, _ in rows:
            print(
                f"| {kind} | {conns} | {r['rate']:.0f} | {g['rate']:.0f} | {g['rate'] / r['rate']:.2f}x "
                f"| {r['p50']:.1f} / {r['p99']:.1f} | {g['p50']:.1f} / {g['p99']:.1f} | {g['p99'] / r['p99']:.2f}x "
                f"| {r['cpu']:.2f} / {g['cpu']:.2f} |"
            )
    if verdicts:
        print("\nStored by the gateway with verification on: "
              + ", ".join(f"{n} emails spf/dkim/dmarc={v}" for v, n in verdicts))
    errors = sum(c["errors"] for row in rows for c in row[2:] if c)
    if errors:
        print(f"\n{errors} messages were not answered 250 (see the lines above)")


if __name__ == "__main__":
    main()
