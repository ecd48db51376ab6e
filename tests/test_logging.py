"""A whole run of `gateway serve` logs structured lines with ids, and no secret.

The daemon runs with an IMAP password (the account points at a closed loopback
port, so the poller fails and logs its errors), a webhook secret (the receiver
is a closed port too, so the task is retried and logged), and an API key used in
every accepted form and a wrong one. Then every line of its output is searched
for each secret.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import httpx

from tests.conftest import free_port

IMAP_PASSWORD = "imap-Pa55-zq81-never-logged"
WEBHOOK_SECRET = "whsec-9f8e7d6c-never-logged"


def _config(tmp_path: Path, smtp_port: int, http_port: int, closed: int) -> Path:
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
backoff_seconds = 0.2

[logging]
format = "json"
level = "debug"

[[organizations]]
name = "acme"

[[queues]]
name = "invoices"
organization = "acme"
addresses = ["invoices@ap.example.com"]

[[queues.processors]]
type = "webhook"
url = "http://127.0.0.1:{closed}/hook"
secret = "{WEBHOOK_SECRET}"
timeout = 2

[[imap]]
name = "ap-mailbox"
host = "127.0.0.1"
port = {closed}
tls = "none"
username = "ap"
password = "{IMAP_PASSWORD}"
queue = "invoices"
poll_interval = 1
"""
    )
    return cfg


def _wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"port {port} never opened")


def test_logs_are_json_with_ids_and_never_contain_secrets(tmp_path):
    smtp_port, http_port, closed = free_port(), free_port(), free_port()
    cfg = _config(tmp_path, smtp_port, http_port, closed)
    env = {**os.environ, "GATEWAY_CONFIG": str(cfg)}
    created = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "create", "--organization", "acme",
         "--scope", "upload.create", "--scope", "upload.read", "--json"],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )
    key = json.loads(created.stdout)["key"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        _wait_port(smtp_port, deadline)
        _wait_port(http_port, deadline)
        msg = EmailMessage()
        msg["From"] = "billing@supplier.example"
        msg["To"] = "invoices@ap.example.com"
        msg["Subject"] = "Invoice"
        msg["Message-ID"] = "<log-test@supplier.example>"
        msg.set_content("see attached")
        msg.add_attachment(b"%PDF-1.4\n%%EOF\n", maintype="application", subtype="pdf", filename="i.pdf")
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
            smtp.send_message(msg)
        base = f"http://127.0.0.1:{http_port}/api/v1"
        with httpx.Client(timeout=30) as client:
            assert client.get(f"{base}/uploads", headers={"Authorization": f"Bearer {key}"}).status_code == 200
            assert client.get(f"{base}/uploads", headers={"X-API-Key": key}).status_code == 200
            basic = base64.b64encode(f"{key}:".encode()).decode()
            r = client.post(f"{base}/uploads", params={"queue": 1}, headers={"Authorization": f"Basic {basic}"},
                            files={"content": ("a.pdf", b"%PDF-1.4\n%%EOF\n", "application/pdf")})
            assert r.status_code in (202, 401), r.text  # either form of Basic; the key is what matters
            assert client.get(f"{base}/uploads", headers={"Authorization": "Bearer gw_not_a_real_key_12345"}).status_code == 401
        time.sleep(3)  # let the poller fail a few times and the webhook be retried
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        out, err = proc.communicate()
    text = out.decode() + err.decode()
    for secret in (IMAP_PASSWORD, WEBHOOK_SECRET, key, "gw_not_a_real_key_12345"):
        assert secret not in text, f"a secret was logged: {secret[:6]}..."
    lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    assert lines and all("event" in x and "timestamp" in x and "level" in x for x in lines)
    events = {x["event"] for x in lines}
    assert "daemon.ready" in events
    created_lines = [x for x in lines if x["event"] == "ingest.created"]
    assert created_lines and all("upload_id" in x and "queue" in x for x in created_lines)
    assert any("email_id" in x for x in created_lines)
    task_lines = [x for x in lines if x["event"].startswith("task.")]
    assert task_lines and all("task_id" in x for x in task_lines)
    assert any(x["event"].startswith("imap.") for x in lines)
