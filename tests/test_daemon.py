"""`gateway serve` under a real NOTIFY_SOCKET, and the systemd unit."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

UNIT = ROOT / "systemd" / "gateway.service"


def serve_config(tmp_path: Path, smtp_port: int, http_port: int) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[storage]
database_url = "sqlite+aiosqlite:///{tmp_path}/gw.db"
root = "{tmp_path}/storage"

[smtp]
port = {smtp_port}

[http]
port = {http_port}
base_url = "http://127.0.0.1:{http_port}"

[workers]
concurrency = 2

[logging]
format = "json"

[[organizations]]
name = "acme"

[[queues]]
name = "invoices"
organization = "acme"
addresses = ["invoices@ap.example.com"]
"""
    )
    return cfg


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_sd_notify_ready_watchdog_stopping_in_order(tmp_path):
    smtp_port, http_port = free_port(), free_port()
    cfg = serve_config(tmp_path, smtp_port, http_port)
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "300000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(cfg), "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    messages: list[str] = []
    try:
        while "READY=1" not in messages:
            messages.append(sock.recv(4096).decode())
        # Every enabled component listens by the time READY=1 is sent.
        ready_state = {"smtp": _listening(smtp_port), "http": _listening(http_port)}
        while messages.count("WATCHDOG=1") < 2:
            messages.append(sock.recv(4096).decode())
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages:
            messages.append(sock.recv(4096).decode())
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
        sock.close()
    assert rc == 0, err.decode()[-2000:]
    ready = messages.index("READY=1")
    assert messages.index("STOPPING=1") > ready
    assert [m for m in messages[ready:] if m == "WATCHDOG=1"], messages
    assert ready_state == {"smtp": True, "http": True}, ready_state
    # Logs are JSON lines on stderr when not on a terminal.
    import json

    events = [json.loads(line)["event"] for line in err.decode().splitlines() if line.startswith("{")]
    assert "daemon.ready" in events and "daemon.stopped" in events


def test_sighup_is_logged_not_fatal(tmp_path):
    cfg = serve_config(tmp_path, free_port(), free_port())
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(60)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(cfg), "serve"],
        env={**os.environ, "NOTIFY_SOCKET": sock_path},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        while sock.recv(4096) != b"READY=1":
            pass
        proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert proc.poll() is None, "SIGHUP must not stop the daemon"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
        sock.close()
    assert b"daemon.reload_unsupported" in err


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    unit = tmp_path / "gateway.service"
    # verify checks that ExecStart exists: point it at this checkout's command.
    unit.write_text(unit_text.replace("/opt/gateway/venv/bin/gateway", str(Path(sys.executable).parent / "gateway")))
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (make test installs it)")
def test_systemd_unit_verifies_cleanly(tmp_path):
    text = UNIT.read_text()
    p = _verify(text, tmp_path)
    assert p.returncode == 0, p.stderr
    # Unknown or misspelt directives are only warnings to systemd: treat them as errors.
    assert "gateway.service" not in p.stderr, p.stderr
    for directive in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=gateway",
        "ConfigurationDirectory=gateway",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
    ):
        assert directive in text, directive
    assert "ExecReload" not in text  # reload is absent, not broken
    # The check itself can fail: a misspelt directive is caught.
    bad = _verify(text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"), tmp_path)
    assert "NoNewPrivilege" in bad.stderr
