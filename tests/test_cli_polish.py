"""The CLI's contract beyond the data: errors under --json, exit statuses, `uploads
move`, what `uploads show` tells, where and how log lines are written.

Real subprocesses on a real SQLite database, as a user or a script runs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import click
import pytest

from gateway.cli import main as cli_main
from gateway.config import load_settings
from gateway.queue.steer import transition
from gateway.runtime import open_runtime
from gateway.storage import models as m
from tests.conftest import base_config, free_port
from tests.queue.conftest import write_toml
from tests.test_ingest import PDF, make_mail

GATEWAY = [sys.executable, "-m", "gateway"]
ANSI = re.compile(r"\x1b\[")


def gw(cfg: Path, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_LOG_FORMAT"} | (env or {})
    kw.setdefault("capture_output", True)
    return subprocess.run([*GATEWAY, "--config", str(cfg), *args], text=True, timeout=120, env=env, **kw)


def json_error(p: subprocess.CompletedProcess) -> dict:
    """The one {"detail", "code"} object --json promises on stderr (log lines aside)."""
    objs = [json.loads(x) for x in p.stderr.splitlines() if x.startswith("{")]
    errors = [o for o in objs if "event" not in o]
    assert len(errors) == 1, p.stderr
    assert set(errors[0]) == {"detail", "code"}, errors[0]
    return errors[0]


@pytest.fixture
def cfg(tmp_path, sqlite_url):
    data = base_config(sqlite_url, tmp_path)
    data["logging"] = {"format": "json", "level": "info"}
    return write_toml(tmp_path / "config.toml", data)


def replay(cfg: Path, tmp_path: Path, name: str, raw: bytes, *args: str) -> dict:
    path = tmp_path / name
    path.write_bytes(raw)
    p = gw(cfg, "replay", str(path), "--json", *args)
    assert p.returncode == 0, p.stderr
    (line,) = [json.loads(x) for x in p.stdout.splitlines()]
    return line["uploads"][0]


# --- errors -----------------------------------------------------------------------


def test_json_errors_carry_a_code_and_exit_status(cfg, tmp_path):
    p = gw(cfg, "uploads", "show", "999", "--json")
    assert (p.returncode, p.stdout) == (1, "")
    assert json_error(p) == {"detail": "upload 999 not found", "code": "not_found"}

    # Click's own parsing errors, before any command body runs.
    p = gw(cfg, "uploads", "show", "abc", "--json")
    assert p.returncode == 2
    err = json_error(p)
    assert err["code"] == "usage_error" and "'abc' is not a valid integer" in err["detail"]
    p = gw(cfg, "tasks", "retry", "--json")
    assert p.returncode == 2 and json_error(p)["code"] == "usage_error"

    p = gw(cfg, "uploads", "list", "--queue", "nope", "--json")
    assert p.returncode == 1 and json_error(p) == {"detail": "queue 'nope' not found", "code": "not_found"}

    bad = tmp_path / "bad.toml"
    bad.write_text("[smtp]\nportt = 1\n")
    p = gw(bad, "tasks", "list", "--json")
    assert p.returncode == 2
    err = json_error(p)
    assert err["code"] == "config_error" and "smtp.portt: unknown key" in err["detail"]


def test_errors_without_json_are_one_line(cfg, tmp_path):
    p = gw(cfg, "uploads", "show", "999")
    assert (p.returncode, p.stdout, p.stderr) == (1, "", "error: upload 999 not found\n")
    p = gw(tmp_path / "missing.toml", "uploads", "list")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("error: ")
    assert "config file not found" in p.stderr


def test_database_unavailable_exits_75_without_the_password(tmp_path, sqlite_url):
    closed = free_port()
    data = base_config(f"postgresql+asyncpg://gw:Sekr3t-pw@127.0.0.1:{closed}/gw", tmp_path)
    cfg = write_toml(tmp_path / "pg.toml", data)
    p = gw(cfg, "tasks", "list", "--json")
    assert p.returncode == 75, p.stderr
    err = json_error(p)
    assert err["code"] == "database_unavailable" and err["detail"].startswith("database unavailable")
    p = gw(cfg, "db", "upgrade")
    assert p.returncode == 75 and p.stderr.startswith("error: database unavailable")
    assert "Sekr3t-pw" not in p.stderr and "Traceback" not in p.stderr


def test_steering_errors_are_json_per_task(cfg, tmp_path):
    up = replay(cfg, tmp_path, "a.eml", make_mail())
    tid = up["tasks"][0]
    p = gw(cfg, "tasks", "retry", str(tid), "999999", "--json")
    assert p.returncode == 1 and p.stdout == ""
    lines = [json.loads(x) for x in p.stderr.splitlines() if x.startswith("{") and '"event"' not in x]
    assert lines == [
        {"detail": f"task {tid} is queued; retry applies to failed tasks only", "code": "conflict_status"},
        {"detail": "task 999999 not found", "code": "not_found"},
    ]


# --- db upgrade --json ------------------------------------------------------------


def test_db_upgrade_json(cfg, sqlite_url):
    p = gw(cfg, "db", "upgrade", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["revisions"] == d["heads"] and d["heads"]
    assert d["database"] == sqlite_url


# --- uploads show -----------------------------------------------------------------


def _fail_task(cfg: Path, task_id: int) -> None:
    async def run():
        async with open_runtime(load_settings(str(cfg))) as rt:
            async with rt.sessions() as s, s.begin():
                t = await s.get(m.Task, task_id)
                transition(s, t, "processing", actor="test", attempts=3)
                transition(s, t, "failed", actor="test", last_error="HTTP 500 from the webhook")

    asyncio.run(run())


def test_uploads_show_tells_metadata_documents_and_task_errors(cfg, tmp_path):
    first = replay(cfg, tmp_path, "a.eml", make_mail(msgid="<a@x>"))
    # The same attachment again in another mail: a document marked duplicate_of.
    up = replay(
        cfg, tmp_path, "b.eml", make_mail(msgid="<b@x>", to="invoices+po-77@ap.example.com", body="Second one.")
    )
    shown = json.loads(gw(cfg, "uploads", "show", str(up["id"]), "--json").stdout)
    body, attachment = shown["documents"]
    task_body, task_att = shown["tasks"]
    _fail_task(cfg, task_att["id"])
    first_doc = json.loads(gw(cfg, "uploads", "show", str(first["id"]), "--json").stdout)["documents"][1]

    p = gw(cfg, "uploads", "show", str(up["id"]), "--json")
    d = json.loads(p.stdout)
    assert d["metadata"] == {"tag": "po-77"}
    att = d["documents"][1]
    assert att["id"] == attachment["id"] and att["kind"] == "attachment" and att["filename"] == "invoice.pdf"
    assert att["content_type"] == "application/pdf" and att["size"] == len(PDF)
    assert att["sha256"] == first_doc["sha256"] and att["duplicate_of"] == first_doc["url"]
    t = d["tasks"][1]
    assert (t["id"], t["status"], t["attempts"], t["last_error"]) == (
        task_att["id"],
        "failed",
        3,
        "HTTP 500 from the webhook",
    )

    text = gw(cfg, "uploads", "show", str(up["id"])).stdout
    assert '  metadata  {"tag": "po-77"}' in text
    assert f"  document {body['id']}: body " in text
    assert f"  document {attachment['id']}: attachment 'invoice.pdf' [application/pdf, {len(PDF)} B]" in text
    assert f"      sha256 {first_doc['sha256']}" in text
    assert f"      duplicate of document {first_doc['id']}" in text
    assert f"      task {task_body['id']}: queued, 0 attempt(s)" in text
    assert f"      task {task_att['id']}: failed, 3 attempt(s), last error: HTTP 500 from the webhook" in text


# --- uploads move -----------------------------------------------------------------


def test_uploads_move(cfg, tmp_path):
    raw = make_mail()
    up = replay(cfg, tmp_path, "a.eml", raw)
    p = gw(cfg, "uploads", "move", str(up["id"]), "--queue", "receipts", "--json")
    assert p.returncode == 0, p.stderr
    moved = json.loads(p.stdout)
    assert moved["id"] == up["id"] and moved["queue_name"] == "receipts"
    tasks = [json.loads(x) for x in gw(cfg, "tasks", "list", "--queue", "receipts", "--json").stdout.splitlines()]
    assert len(tasks) == 2 and all(t["upload"].endswith(f"/uploads/{up['id']}") for t in tasks)

    p = gw(cfg, "uploads", "move", str(up["id"]), "--queue", "invoices")
    assert p.returncode == 0 and p.stdout == f"upload {up['id']} moved to queue invoices (processing)\n"

    p = gw(cfg, "uploads", "move", str(up["id"]), "--queue", "orders", "--json")  # globex's queue
    assert p.returncode == 1 and json_error(p)["code"] == "bad_request"
    p = gw(cfg, "uploads", "move", "999", "--queue", "receipts", "--json")
    assert p.returncode == 1 and json_error(p) == {"detail": "upload 999 not found", "code": "not_found"}
    p = gw(cfg, "uploads", "move", str(up["id"]), "--json")
    assert p.returncode == 2 and json_error(p)["code"] == "usage_error"

    # The same email replayed into receipts: moving the first upload there would
    # give the email two uploads in one queue.
    other = replay(cfg, tmp_path, "again.eml", raw, "--queue", "receipts")
    assert other["id"] != up["id"]
    p = gw(cfg, "uploads", "move", str(up["id"]), "--queue", "receipts", "--json")
    assert p.returncode == 1
    assert json_error(p) == {
        "detail": f"upload {other['id']} already holds this email in queue 'receipts'",
        "code": "conflict_status",
    }
    shown = json.loads(gw(cfg, "uploads", "show", str(up["id"]), "--json").stdout)
    assert shown["queue_name"] == "invoices"


# --- help -------------------------------------------------------------------------


def test_uploads_and_tasks_commands_and_options_have_help():
    missing = []
    for group in ("uploads", "tasks"):
        for name, cmd in cli_main.commands[group].commands.items():
            if not cmd.help:
                missing.append(f"{group} {name}")
            for param in cmd.params:
                if isinstance(param, click.Option) and not param.help:
                    missing.append(f"{group} {name} {param.opts[0]}")
    assert missing == []


# --- log lines --------------------------------------------------------------------


def _moved_log_line(stderr: str) -> str:
    (line,) = [x for x in stderr.splitlines() if "cli.upload_moved" in x]
    return line


def test_log_format_flag_and_env_override_the_config(cfg, tmp_path):
    up = replay(cfg, tmp_path, "a.eml", make_mail())
    move = ("uploads", "move", str(up["id"]), "--queue", "receipts")

    p = gw(cfg, *move)  # the config says json
    assert json.loads(_moved_log_line(p.stderr))["upload_id"] == up["id"]
    assert "cli.upload_moved" not in p.stdout

    p = gw(cfg, "--log-format", "text", *move)
    line = _moved_log_line(p.stderr)
    assert not line.startswith("{") and f"upload_id={up['id']}" in line
    assert not ANSI.search(line)  # not a terminal: no colour codes

    p = gw(cfg, *move, env={"GATEWAY_LOG_FORMAT": "text"})
    assert not _moved_log_line(p.stderr).startswith("{")

    p = gw(cfg, "--log-format", "xml", *move)
    assert p.returncode == 2


def test_auto_log_format_is_text_on_a_terminal_json_on_a_pipe(tmp_path, sqlite_url):
    data = base_config(sqlite_url, tmp_path)
    data["logging"] = {"format": "auto", "level": "info"}
    cfg = write_toml(tmp_path / "config.toml", data)
    up = replay(cfg, tmp_path, "a.eml", make_mail())
    move = ("uploads", "move", str(up["id"]), "--queue", "receipts")

    p = gw(cfg, *move)
    assert json.loads(_moved_log_line(p.stderr))["event"] == "cli.upload_moved"

    primary, secondary = pty.openpty()
    try:
        p = gw(cfg, *move, stderr=secondary, capture_output=False, stdout=subprocess.PIPE)
        os.close(secondary)
        secondary = None
        out = b""
        while select.select([primary], [], [], 5)[0]:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(primary)
        if secondary is not None:
            os.close(secondary)
    assert p.returncode == 0
    line = _moved_log_line(out.decode())
    assert not line.startswith("{") and "upload_id" in line


def test_serve_logs_json_when_not_on_a_terminal(tmp_path, sqlite_url):
    """As under systemd: stderr is the journal, the config leaves the format to "auto"."""
    data = base_config(sqlite_url, tmp_path)
    data["smtp"] = {"enabled": True, "host": "127.0.0.1", "port": free_port()}
    data["logging"] = {"format": "auto", "level": "info"}
    cfg = write_toml(tmp_path / "config.toml", data)
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_LOG_FORMAT", "NOTIFY_SOCKET")}
    proc = subprocess.Popen(
        [*GATEWAY, "--config", str(cfg), "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        # The first line says the daemon is up; the rest come with the shutdown.
        ready = select.select([proc.stderr], [], [], 60)[0]
        first = proc.stderr.readline().decode() if ready else ""
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rest = proc.communicate(timeout=30)[1].decode()
        except subprocess.TimeoutExpired:
            proc.kill()
            rest = proc.communicate()[1].decode()
    lines = [x for x in (first + rest).splitlines() if x.strip()]
    assert first and len(lines) >= 2, lines
    assert all("event" in json.loads(x) for x in lines), lines
