"""The `gateway` command as a user runs it: a real subprocess, a real config file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from tests.test_ingest import make_mail

GATEWAY = [sys.executable, "-m", "gateway"]


def write_config(tmp_path: Path, db_url: str) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[storage]
database_url = "{db_url}"
root = "storage"

[logging]
format = "json"

[[organizations]]
name = "acme"

[[queues]]
name = "invoices"
organization = "acme"
addresses = ["invoices@ap.example.com"]

[[queues]]
name = "receipts"
organization = "acme"
addresses = ["receipts@ap.example.com"]
"""
    )
    return cfg


def gw(cfg: Path, *args: str, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "GATEWAY_CONFIG": str(cfg)}
    p = subprocess.run([*GATEWAY, *args], capture_output=True, text=True, env=env, timeout=120)
    if check_rc is not None:
        assert p.returncode == check_rc, (p.returncode, p.stdout, p.stderr)
    return p


@pytest.fixture
def cfg(tmp_path, db_url):
    return write_config(tmp_path, db_url)


def test_replay_json_then_duplicate_then_show(cfg, tmp_path):
    mails = tmp_path / "in"
    (mails / "sub").mkdir(parents=True)
    (mails / "a.eml").write_bytes(make_mail(msgid="<a@x>"))
    (mails / "sub" / "b.eml").write_bytes(make_mail(msgid="<b@x>", to="receipts@ap.example.com"))
    (mails / "notes.txt").write_text("not a mail, listed as skipped")

    p = gw(cfg, "replay", str(mails), "--json")
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert sorted(x["status"] for x in lines) == ["created", "created", "skipped"]
    skipped = [x for x in lines if x["status"] == "skipped"]
    assert [(Path(x["path"]).name, x["reason"]) for x in skipped] == [("notes.txt", "not_a_mail")]
    lines = [x for x in lines if x["status"] != "skipped"]
    by_path = {Path(x["path"]).name: x for x in lines}
    assert set(by_path) == {"a.eml", "b.eml"}
    assert by_path["b.eml"]["uploads"][0]["queue"] == "receipts"
    assert len(by_path["a.eml"]["uploads"][0]["tasks"]) == 2
    assert set(lines[0]) == {"path", "status", "uploads", "error", "reason"}

    again = gw(cfg, "replay", str(mails / "a.eml"), "--json")
    (line,) = [json.loads(x) for x in again.stdout.splitlines()]
    assert line["status"] == "duplicate"
    assert line["uploads"] == by_path["a.eml"]["uploads"]

    uid = by_path["a.eml"]["uploads"][0]["id"]
    shown = json.loads(gw(cfg, "uploads", "show", str(uid), "--json").stdout)
    assert shown["id"] == uid and shown["status"] == "processing"
    assert shown["email"]["subject"] == "Invoice 42"
    assert [d["kind"] for d in shown["documents"]] == ["body", "attachment"]
    assert [t["status"] for t in shown["tasks"]] == ["queued", "queued"]
    assert shown["url"].endswith(f"/api/v1/uploads/{uid}")

    listed = [json.loads(x) for x in gw(cfg, "uploads", "list", "--json").stdout.splitlines()]
    assert len(listed) == 2
    listed = [json.loads(x) for x in gw(cfg, "uploads", "list", "--queue", "receipts", "--json").stdout.splitlines()]
    assert [u["queue_name"] for u in listed] == ["receipts"]

    tasks = [json.loads(x) for x in gw(cfg, "tasks", "list", "--upload", str(uid), "--json").stdout.splitlines()]
    assert len(tasks) == 2
    task = json.loads(gw(cfg, "tasks", "show", str(tasks[0]["id"]), "--json").stdout)
    assert task["history"][0]["to"] == "queued" and task["history"][0]["by"] == "replay"


def test_replay_exit_status_and_summary(cfg, tmp_path):
    good = tmp_path / "good.eml"
    good.write_bytes(make_mail())
    nowhere = tmp_path / "nowhere.eml"
    nowhere.write_bytes(make_mail(to="someone@else.example", msgid="<n@x>"))
    p = gw(cfg, "replay", str(good), str(nowhere), str(tmp_path / "missing.eml"), check_rc=1)
    assert "rejected" in p.stdout and "no recipient routes" in p.stdout
    assert "3 messages: 1 created, 0 duplicate, 1 rejected, 1 error" in p.stdout


def test_replay_mbox(cfg, tmp_path):
    import mailbox

    path = tmp_path / "archive.mbox"
    box = mailbox.mbox(path)
    box.add(make_mail(msgid="<m1@x>"))
    box.add(make_mail(msgid="<m2@x>", subject="Second"))
    box.close()
    p = gw(cfg, "replay", str(path), "--json")
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert [x["status"] for x in lines] == ["created", "created"]
    assert {x["path"].rsplit("#", 1)[1] for x in lines} == {"1", "2"}


def test_replay_fixtures_folder_into_queue(cfg):
    p = gw(cfg, "replay", str(FIXTURES), "--queue", "invoices", "--json")
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert lines and all(x["status"] in ("created", "duplicate") for x in lines)


def test_unknown_queue_and_bad_config_exit_2(cfg, tmp_path):
    p = gw(cfg, "replay", str(tmp_path), "--queue", "nope", check_rc=2)
    assert "unknown queue 'nope'" in p.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[smtp]\nportt = 1\n")
    p = gw(bad, "uploads", "list", check_rc=2)
    assert "smtp.portt: unknown key" in p.stderr


def test_show_missing_upload_exit_1(cfg):
    p = gw(cfg, "uploads", "show", "999", check_rc=1)
    assert "upload 999 not found" in p.stderr


def test_db_upgrade_and_check(cfg):
    p = gw(cfg, "db", "upgrade")
    assert "database at revision" in p.stdout
    p = gw(cfg, "check", "--json")
    results = [json.loads(x) for x in p.stdout.splitlines()]
    assert {r["name"] for r in results} >= {"config", "storage", "database", "migrations"}
    assert all(r["ok"] for r in results)


def test_check_lists_every_problem_and_exits_1(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("storage cannot live under a file")
    cfg = tmp_path / "broken.toml"
    cfg.write_text(
        f"""
[storage]
database_url = "postgresql+asyncpg://nobody@127.0.0.1:1/nothing"
root = "{blocker}/storage"

[[organizations]]
name = "acme"

[[queues]]
name = "invoices"
organization = "acme"
addresses = ["invoices@ap.example.com"]

[[queues.processors]]
type = "command"
argv = ["/no/such/program", "{{path}}"]
"""
    )
    p = gw(cfg, "check", check_rc=1)
    failed = [line for line in p.stdout.splitlines() if line.startswith("FAIL")]
    names = {line.split()[1].rstrip(":") for line in failed}
    assert {"storage", "database", "queues.invoices.processors.0"} <= names, p.stdout
    assert "3 problem(s)" in p.stderr


def test_emails_show_prints_the_part_ledger(cfg):
    from tests.conftest import FIXTURES

    out = gw(cfg, "replay", "--json", str(FIXTURES / "delivery_status_report.eml"), "--queue", "invoices").stdout
    email_id = json.loads(out.splitlines()[0])["uploads"][0]["email_id"] if "email_id" in out else None
    if email_id is None:  # the replay line names uploads; read the email from the upload
        upload_id = json.loads(out.splitlines()[0])["uploads"][0]["id"]
        email_id = json.loads(gw(cfg, "uploads", "show", str(upload_id), "--json").stdout)["email"]["id"]
    shown = json.loads(gw(cfg, "emails", "show", str(email_id), "--json").stdout)
    assert [(p["path"], p["outcome"], p["reason"]) for p in shown["parts"]] == [
        ("0", "container", None), ("1", "body", None), ("2", "document", None), ("3", "document", None),
        ("4", "document", None), ("5", "skipped", "external_body"),
    ]
    text = gw(cfg, "emails", "show", str(email_id)).stdout
    assert "skipped (external_body)" in text and "message/delivery-status" in text
    missing = gw(cfg, "emails", "show", "999999", "--json", check_rc=1)
    assert json.loads(missing.stderr)["code"] == "not_found"
