#!/usr/bin/env python3
"""Audit the pinned dependencies (requirements.lock) for known advisories with
pip-audit; exit 1 when a pinned version has one. `make test` runs it.

    .venv/bin/python scripts/audit.py                 # requirements.lock
    .venv/bin/python scripts/audit.py -r other.txt    # any file of exact pins
    .venv/bin/python scripts/audit.py --offline       # the snapshot only
    .venv/bin/python scripts/audit.py --refresh       # rewrite the snapshot from OSV

Two sources, both read by pip-audit (Apache-2.0, PyPA), every pin checked
against each one that answers:

1. live: OSV (api.osv.dev) and PyPI's per-release JSON API (pypi.org/pypi/NAME/VERSION/json),
   pip-audit's two services. Each is probed first (a few seconds at most); one that
   does not answer is skipped with a line saying so, never silently.
2. the snapshot: scripts/advisories.json, OSV records of the advisories for the
   locked packages, committed to the repository. pip-audit reads it through its
   OSV service pointed at a small OSV-compatible server this script runs on
   127.0.0.1 for the audit's duration. The snapshot is what gates `make test` on
   a machine with no advisory service (this one reaches only a PyPI mirror that
   does not serve the per-release JSON API, and no OSV): advisories published
   after the snapshot's date are then not seen, and the output says so.

The exit status is 1 when any source reports an advisory for a pinned version,
2 when the audit cannot run (pip-audit missing, a malformed lock or snapshot), 0
otherwise. A pin can be excused only by naming its advisory with --ignore ID
(with the reason in the Makefile or CI next to it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
SNAPSHOT = Path(__file__).resolve().parent / "advisories.json"

OSV_URL = os.environ.get("GATEWAY_AUDIT_OSV_URL", "https://api.osv.dev/v1/query")
PYPI_PROBE = "https://pypi.org/pypi/pip-audit/2.10.1/json"  # a release that exists: 404 means no per-release API
PROBE_TIMEOUT = 5.0

# The CPython patch levels whose email-package fixes the parser relies on (see
# docs/dependencies.md, written by scripts/dependencies.py). Below them the
# gateway's own header-parameter cap is the only guard; the audit says so.
CPYTHON_EMAIL_FIXES = {(3, 10): (3, 10, 20), (3, 11): (3, 11, 15), (3, 12): (3, 12, 13)}


def key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> list[tuple[str, str]]:
    pins = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name.strip()):
            raise SystemExit(f"audit: {path.name}:{number}: not an exact pin: {line!r}")
        pins.append((key(name), version.strip()))
    return pins


# --- the snapshot, and OSV's matching of a version against an advisory ---------


def load_snapshot(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        for vuln in data["vulns"]:
            vuln["id"], vuln["affected"]  # noqa: B018 - the fields the matcher needs
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"audit: cannot read the advisory snapshot {path}: {e}")
    return data


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def affects(vuln: dict, name: str, version: str) -> bool:
    """Whether an OSV record names ``version`` of PyPI package ``name`` as affected:
    listed in ``versions``, or inside an ECOSYSTEM range (introduced <= v < fixed,
    or <= last_affected), as the OSV schema defines them."""
    v = _version(version)
    for affected in vuln.get("affected", []):
        package = affected.get("package", {})
        if package.get("ecosystem") != "PyPI" or key(package.get("name", "")) != key(name):
            continue
        if version in affected.get("versions", []):
            return True
        if v is None:
            continue
        for rng in affected.get("ranges", []):
            if rng.get("type") != "ECOSYSTEM":
                continue
            inside = False
            for event in rng.get("events", []):
                if "introduced" in event:
                    start = event["introduced"]
                    inside = start == "0" or (_version(start) or v) <= v
                elif "fixed" in event and inside:
                    if v < (_version(event["fixed"]) or v):
                        return True
                    inside = False
                elif "last_affected" in event and inside:
                    if v <= (_version(event["last_affected"]) or v):
                        return True
                    inside = False
            if inside:
                return True
    return False


class SnapshotOSV:
    """OSV's POST /v1/query on 127.0.0.1, answered from the snapshot, so that
    pip-audit's own OSV service reads it (``--osv-url``)."""

    def __init__(self, vulns: list[dict]):
        self.vulns = [v for v in vulns if not v.get("withdrawn")]
        vulns_ = self.vulns

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                try:
                    query = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                    name, version = query["package"]["name"], query["version"]
                except (ValueError, KeyError, TypeError):
                    self.send_error(400)
                    return
                body = json.dumps({"vulns": [v for v in vulns_ if affects(v, name, version)]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/query"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


# --- reaching the live services ---------------------------------------------------


def probe(url: str, data: bytes | None = None) -> str | None:
    """None when ``url`` answers 200; else why not, in a few words."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT) as response:
            response.read(1)
        return None
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return str(reason) or type(reason).__name__


# --- running pip-audit -----------------------------------------------------------


def pip_audit_command() -> list[str]:
    here = Path(sys.executable).parent / "pip-audit"
    if here.exists():
        return [str(here)]
    found = shutil.which("pip-audit")
    if found:
        return [found]
    raise SystemExit(
        "audit: pip-audit is not installed: .venv/bin/pip install -c requirements.lock -e '.[dev]' (make venv does)"
    )


def run_pip_audit(lock: Path, service: str, osv_url: str | None, ignore: list[str], env: dict) -> dict:
    """pip-audit's JSON report for ``lock``; SystemExit(2) when pip-audit fails
    other than by finding advisories."""
    with tempfile.TemporaryDirectory(prefix="gateway-audit-") as tmp:
        out = Path(tmp) / "report.json"
        cmd = [
            *pip_audit_command(),
            "-r", str(lock), "--no-deps", "--disable-pip", "--strict",
            "--progress-spinner", "off", "--timeout", "20",
            "-s", service, "-f", "json", "--desc", "off", "--aliases", "on",
            "-o", str(out), "--cache-dir", str(Path(tmp) / "cache"),
        ]
        if osv_url:
            cmd += ["--osv-url", osv_url]
        for vuln_id in ignore:
            cmd += ["--ignore-vuln", vuln_id]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        report = json.loads(out.read_text()) if out.exists() and out.stat().st_size else None
    if report is None or p.returncode not in (0, 1):
        tail = "\n  ".join((p.stderr or p.stdout).strip().splitlines()[-6:])
        raise SystemExit(f"audit: pip-audit ({service}) failed (exit {p.returncode}):\n  {tail}")
    return report


def findings(report: dict) -> list[str]:
    lines = []
    for dep in report.get("dependencies", []):
        if dep.get("skip_reason"):
            lines.append(f"{dep['name']}: not audited: {dep['skip_reason']}")
        for vuln in dep.get("vulns", []):
            ids = " ".join([vuln["id"], *[a for a in vuln.get("aliases", []) if a != vuln["id"]]])
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed release"
            lines.append(f"{dep['name']}=={dep['version']}: {ids} (fixed in {fixed})")
    return lines


# --- refreshing the snapshot -----------------------------------------------------


def refresh(pins: list[tuple[str, str]], path: Path) -> int:
    """Rewrite the snapshot with every OSV record for every locked package (all
    versions, so a later pin is covered too). Needs OSV."""
    vulns: dict[str, dict] = {}
    for name, _ in pins:
        query = json.dumps({"package": {"name": name, "ecosystem": "PyPI"}}).encode()
        request = urllib.request.Request(OSV_URL, data=query, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.load(response)
        except (urllib.error.URLError, OSError) as e:
            print(f"audit: OSV ({OSV_URL}) unreachable: {getattr(e, 'reason', e)}; snapshot left as it is", file=sys.stderr)
            return 2
        for vuln in answer.get("vulns", []):
            vulns[vuln["id"]] = {k: vuln[k] for k in ("id", "aliases", "summary", "published", "withdrawn", "affected") if k in vuln}
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(
        json.dumps(
            {
                "about": old.get("about", "Advisory snapshot for scripts/audit.py (OSV records)."),
                "taken": date.today().isoformat(),
                "source": f"OSV ({OSV_URL})",
                "vulns": sorted(vulns.values(), key=lambda v: v["id"]),
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {path} ({len(vulns)} advisories for {len(pins)} packages)")
    return 0


# --- the audit -------------------------------------------------------------------


def cpython_note() -> str | None:
    need = CPYTHON_EMAIL_FIXES.get(sys.version_info[:2])
    if need and sys.version_info[:3] < need:
        have = ".".join(map(str, sys.version_info[:3]))
        return (
            f"note: CPython {have} predates {'.'.join(map(str, need))}, which fixes the email package's "
            "quadratic parameter parsing and header-injection bugs (gh-136063, gh-143935, gh-144125); "
            "the gateway caps header parameters itself (docs/dependencies.md)"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-r", "--requirement", type=Path, default=LOCK, help="file of exact pins (default: requirements.lock)")
    parser.add_argument("--snapshot", type=Path, default=SNAPSHOT, help="OSV records used offline (default: scripts/advisories.json)")
    parser.add_argument("--offline", action="store_true", help="use the snapshot only, reach no service")
    parser.add_argument("--ignore", action="append", default=[], metavar="ID", help="excuse one advisory by id (repeatable)")
    parser.add_argument("--refresh", action="store_true", help="rewrite the snapshot from OSV, then exit")
    args = parser.parse_args(argv)

    started = time.monotonic()
    pins = read_pins(args.requirement)
    if args.refresh:
        return refresh(pins, args.snapshot)
    snapshot = load_snapshot(args.snapshot)
    pip_audit_command()  # fail early, with the remedy, when it is missing
    print(f"audit: {len(pins)} pins in {args.requirement.name}")

    env = dict(os.environ)
    # The snapshot server is on the loopback: never through a proxy.
    for var in ("NO_PROXY", "no_proxy"):
        env[var] = ",".join(filter(None, [env.get(var, ""), "127.0.0.1", "localhost"]))

    problems: list[str] = []
    live_ok = []
    if args.offline:
        print("audit: live advisory services: not asked (--offline)")
    else:
        osv_down = probe(OSV_URL, json.dumps({"package": {"name": "pip", "ecosystem": "PyPI"}, "version": "0"}).encode())
        if osv_down:
            print(f"audit: OSV ({OSV_URL}) unreachable ({osv_down}): live OSV audit skipped")
        else:
            lines = findings(run_pip_audit(args.requirement, "osv", OSV_URL, args.ignore, env))
            print(f"audit: OSV (live): {len(lines) or 'no'} finding(s)")
            problems += [f"[osv] {line}" for line in lines]
            live_ok.append("OSV")
        pypi_down = probe(PYPI_PROBE)
        if pypi_down:
            print(f"audit: PyPI JSON API (pypi.org/pypi/NAME/VERSION/json) unreachable ({pypi_down}): live PyPI audit skipped")
        else:
            lines = findings(run_pip_audit(args.requirement, "pypi", None, args.ignore, env))
            print(f"audit: PyPI (live): {len(lines) or 'no'} finding(s)")
            problems += [f"[pypi] {line}" for line in lines]
            live_ok.append("PyPI")

    with SnapshotOSV(snapshot["vulns"]) as server:
        lines = findings(run_pip_audit(args.requirement, "osv", server.url, args.ignore, env))
    print(f"audit: snapshot of {snapshot.get('taken', '?')} ({len(snapshot['vulns'])} advisories): {len(lines) or 'no'} finding(s)")
    problems += [f"[snapshot] {line}" for line in lines if f"[osv] {line}" not in problems]
    if not live_ok:
        print(
            f"audit: WARNING: no advisory service answered: advisories published after {snapshot.get('taken', '?')} "
            "are not checked (refresh the snapshot where OSV answers: scripts/audit.py --refresh)"
        )

    note = cpython_note()
    if note:
        print(f"audit: {note}")
    elapsed = time.monotonic() - started
    if problems:
        print(f"audit: FAILED in {elapsed:.1f}s: known advisories for pinned versions (raise the pins and the floors):")
        for line in problems:
            print(f"  {line}")
        return 1
    print(f"audit: ok in {elapsed:.1f}s: no known advisory for any pin (sources: {', '.join([*live_ok, 'snapshot'])})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            sys.exit(2)
        raise
