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

    def next(self) -> bytes:
        self.n += 1
        token = f"{self.prefix}{self.n:024d}".encode()
        return self.raw.replace(TOKEN, token)


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
        w.write(b"MAIL FROM:<bench@client.example>\r\nRCPT TO:<" + RCPT.encode() + b">\r\n")
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


async def run_cell(port: int, kind: str, conns: int, seconds: float, warmup: float, pid: int) -> dict:
    msgs = Messages(kind)
    lat: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    cpu0 = cpu_seconds(pid)
    measure_from = start + warmup
    stop_at = measure_from + seconds
    await asyncio.gather(*(_session(port, msgs, measure_from, stop_at, lat, errors) for _ in range(conns)))
    elapsed = time.perf_counter() - measure_from
    # Server CPU per message, warm-up included (over every message it answered).
    cpu = (cpu_seconds(pid) - cpu0) / max(1, msgs.n) * 1000
    lat.sort()
    return {
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


def gateway_config(d: Path, port: int, database_url: str | None) -> Path:
    db = database_url or f"sqlite+aiosqlite:///{d / 'gateway.db'}"
    cfg = d / "config.toml"
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
"""
    )
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="measured time per cell (default 6)")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured time before each cell")
    ap.add_argument("--database-url", help="gateway database (default: SQLite in a temp folder)")
    ap.add_argument("--sizes", default="2KB,200KB", help="message kinds to run (default 2KB,200KB)")
    ap.add_argument("--conns", default="1,16", help="concurrent connections to run (default 1,16)")
    ap.add_argument("--raw-server", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_server:
        raw_server(args.raw_server)
        return

    with tempfile.TemporaryDirectory(prefix="smtp-bench-") as tmp:
        d = Path(tmp)
        raw_port, gw_port = free_port(), free_port()
        raw = subprocess.Popen([sys.executable, __file__, "--raw-server", str(raw_port)])
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(gateway_config(d, gw_port, args.database_url)), "serve"],
            cwd=ROOT,
            stdout=(d / "gateway.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_listening(raw_port, raw, "raw aiosmtpd")
            wait_listening(gw_port, gw, "gateway serve")
            rows = []
            for kind in args.sizes.split(","):
                for conns in (int(c) for c in args.conns.split(",")):
                    res = {}
                    for name, port, pid in (("raw", raw_port, raw.pid), ("gateway", gw_port, gw.pid)):
                        res[name] = asyncio.run(run_cell(port, kind, conns, args.seconds, args.warmup, pid))
                        print(f"  {kind:>5} x{conns:<2} {name:<7} {res[name]['rate']:8.1f} msg/s "
                              f"p50 {res[name]['p50']:7.1f} ms  p99 {res[name]['p99']:7.1f} ms"
                              f"  server CPU {res[name]['cpu']:5.2f} ms/msg  errors {res[name]['errors']}",
                              file=sys.stderr)
                    rows.append((kind, conns, res["raw"], res["gateway"]))
        finally:
            for p in (gw, raw):
                p.terminate()
            for p in (gw, raw):
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()

    db = "PostgreSQL" if args.database_url else "SQLite (synchronous=FULL)"
    print(f"\nSMTP ingest, {args.seconds:g} s per cell, gateway on {db}, {os.cpu_count()} CPUs\n")
    print(
        "| message | conns | raw msg/s | gateway msg/s | ratio | raw p50/p99 ms | gateway p50/p99 ms "
        "| p99 ratio | server CPU ms/msg raw / gateway |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, conns, r, g in rows:
        print(
            f"| {kind} | {conns} | {r['rate']:.0f} | {g['rate']:.0f} | {g['rate'] / r['rate']:.2f}x "
            f"| {r['p50']:.1f} / {r['p99']:.1f} | {g['p50']:.1f} / {g['p99']:.1f} | {g['p99'] / r['p99']:.2f}x "
            f"| {r['cpu']:.2f} / {g['cpu']:.2f} |"
        )
    errors = sum(r["errors"] + g["errors"] for _, _, r, g in rows)
    if errors:
        print(f"\n{errors} messages were not answered 250 (see the lines above)")


if __name__ == "__main__":
    main()
