"""A throwaway authoritative DNS server (NSD) on 127.0.0.1, and one that never answers.

``Nsd.create(dir, zones=("example", "test"))`` writes an ``nsd.conf`` and one zone
file per zone into ``dir`` and starts NSD in the foreground on a free port (UDP
and TCP). ``serve(records)`` replaces every zone's records with the zone-file
lines given (absolute owner names; each line goes to the zone it is under),
bumps the serials, makes NSD reload (SIGHUP) and waits until it answers with the
new serials, so a test's next query sees the new data. ``txt(name, text)`` makes
a TXT line, split into 255-byte strings as DNS needs (DKIM keys are longer).

``Silent`` is a UDP and TCP socket on a free loopback port that never answers: a
resolver pointed at it times out, which is how the tests get a real DNS timeout.

Needs the ``nsd`` binary (``scripts/test-deps.sh`` installs the ``nsd`` package);
it runs as whoever runs the tests (no privilege drop, ports above 1024).
``missing()`` says why it cannot run here, for a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.dovecot import free_port

_CONF = """\
server:
  ip-address: 127.0.0.1
  port: {port}
  do-ip6: no
  username: ""
  chroot: ""
  zonesdir: "{d}"
  database: ""
  zonelistfile: "{d}/zone.list"
  xfrdfile: "{d}/xfrd.state"
  xfrdir: "{d}/xfr"
  pidfile: "{d}/nsd.pid"
  logfile: "{d}/nsd.log"
  server-count: 1
  verbosity: 1
  hide-version: yes
  refuse-any: yes
remote-control:
  control-enable: no
"""

_ZONE_CONF = """\
zone:
  name: "{zone}"
  zonefile: "{zone}.zone"
"""


def _binary(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def missing() -> str | None:
    """Why NSD cannot be started here, or None."""
    if _binary("nsd") is None:
        return "nsd not installed (scripts/test-deps.sh installs nsd)"
    return None


def txt(name: str, text: str) -> str:
    """A zone-file TXT line for ``name`` holding ``text``, split into the
    character-strings of at most 255 bytes that one TXT record is made of."""
    raw = text.encode()
    chunks = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
    quoted = " ".join('"' + c.decode().replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
    return f"{name} 300 IN TXT {quoted}"


def _soa_serial(port: int, zone: str, timeout: float = 0.5) -> int | None:
    """The SOA serial NSD answers for ``zone``, or None (a bare DNS query, so
    this helper needs nothing but the standard library)."""
    qname = b"".join(bytes([len(label)]) + label.encode() for label in zone.strip(".").split(".")) + b"\0"
    query = struct.pack(">HHHHHH", 0x5EED, 0, 1, 0, 0, 0) + qname + struct.pack(">HH", 6, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(query, ("127.0.0.1", port))
            reply, _ = s.recvfrom(4096)
        except OSError:
            return None
    if len(reply) < 12 or struct.unpack(">H", reply[:2])[0] != 0x5EED or reply[3] & 0x0F:
        return None
    if struct.unpack(">H", reply[6:8])[0] < 1:
        return None
    pos = 12 + len(qname) + 4
    # answer: a compressed owner name (2 bytes), type, class, ttl, rdlength
    pos += 2 + 10
    # rdata: mname, rname (compressed or not), then the serial
    for _ in range(2):
        while True:
            n = reply[pos]
            if n >= 0xC0:
                pos += 2
                break
            pos += 1 + n
            if n == 0:
                break
    return struct.unpack(">I", reply[pos:pos + 4])[0]


@dataclass
class Nsd:
    dir: Path
    port: int
    zones: tuple[str, ...]
    serial: int = 1
    records: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None

    @classmethod
    def create(cls, d: Path, zones: tuple[str, ...] = ("example", "test")) -> "Nsd":
        """Configure ``d`` (created if needed) and start NSD on a free port,
        serving ``zones`` with nothing in them but their SOA and NS."""
        server = cls(Path(d).resolve(), free_port(), tuple(z.strip(".").lower() for z in zones))
        server.dir.mkdir(parents=True, exist_ok=True)
        (server.dir / "xfr").mkdir(exist_ok=True)
        server.conf.write_text(
            _CONF.format(d=server.dir, port=server.port)
            + "".join(_ZONE_CONF.format(zone=z) for z in server.zones)
        )
        server._write_zones()
        server.start_again()
        return server

    @property
    def conf(self) -> Path:
        return self.dir / "nsd.conf"

    @property
    def log(self) -> Path:
        return self.dir / "nsd.log"

    @property
    def address(self) -> str:
        """``host:port``, as ``[authentication] nameservers`` takes it."""
        return f"127.0.0.1:{self.port}"

    def _zone_of(self, line: str) -> str:
        owner = line.split(None, 1)[0].strip(".").lower()
        for zone in sorted(self.zones, key=len, reverse=True):
            if owner == zone or owner.endswith("." + zone):
                return zone
        raise ValueError(f"{owner} is in none of the zones {self.zones}")

    def _write_zones(self) -> None:
        by_zone: dict[str, list[str]] = {z: [] for z in self.zones}
        for line in self.records:
            by_zone[self._zone_of(line)].append(line)
        for zone, lines in by_zone.items():
            head = (
                f"$ORIGIN {zone}.\n$TTL 300\n"
                f"@ IN SOA ns.{zone}. hostmaster.{zone}. {self.serial} 3600 600 86400 60\n"
                f"@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
            )
            path = self.dir / f"{zone}.zone"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(head + "".join(line.rstrip() + "\n" for line in lines))
            os.replace(tmp, path)

    def _check_zones(self) -> None:
        checker = _binary("nsd-checkzone")
        if checker is None:
            return
        for zone in self.zones:
            p = subprocess.run([checker, zone, str(self.dir / f"{zone}.zone")], capture_output=True, text=True)
            if p.returncode != 0:
                raise ValueError(f"zone {zone} does not load: {p.stdout}{p.stderr}")

    def serve(self, records: list[str]) -> None:
        """Replace the records of every zone with ``records`` (zone-file lines,
        absolute owner names with a trailing dot) and wait until NSD serves them."""
        self.records = list(records)
        self.serial += 1
        self._write_zones()
        self._check_zones()
        assert self.process is not None and self.process.poll() is None, self.log_tail()
        self.process.send_signal(signal.SIGHUP)
        self._wait_for_serial(self.serial)

    def _wait_for_serial(self, serial: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"nsd exited ({self.process.returncode}): {self.log_tail()}")
            if all(_soa_serial(self.port, z) == serial for z in self.zones):
                return
            time.sleep(0.02)
        raise TimeoutError(f"nsd did not serve serial {serial} within {timeout}s: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return ""

    def start_again(self) -> None:
        """Start NSD (again, after ``stop``) with the configuration and zones on disk."""
        self.process = subprocess.Popen(
            [_binary("nsd") or "nsd", "-d", "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "nsd.stderr", "ab"),
        )
        self._wait_for_serial(self.serial)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class Silent:
    """A DNS server address that never answers (UDP and TCP bound, nothing read)."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.tcp.bind(("127.0.0.1", self.port))
            self.tcp.listen(16)
        except OSError:  # the TCP port is taken: UDP alone still times out
            self.tcp.close()
            self.tcp = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.udp.close()
        if self.tcp is not None:
            self.tcp.close()
