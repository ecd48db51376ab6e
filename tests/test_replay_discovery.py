"""What `gateway replay` finds in the folders people have: Maildirs, mbox, mail files of any name.

The discovery tests use real files; the CLI tests run the real command against
a real SQLite database and read the rows back, so "created" means stored.
"""

from __future__ import annotations

import json
import mailbox
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from gateway.ingress.replay import ReplayOutcome, _Item, _More, classify, count, discover
from tests.test_cli import gw, write_config
from tests.test_ingest import make_mail

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"


def mail(n: int, **kw) -> bytes:
    return make_mail(msgid=f"<m{n}@x>", subject=f"Message {n}", **kw)


def maildir(root: Path) -> Path:
    """A Maildir as Dovecot leaves it: messages in new/ and cur/, one in delivery in tmp/, index files."""
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "new" / "1700000000.M1P2.host").write_bytes(mail(1))
    (root / "cur" / "1700000001.M2P2.host:2,S").write_bytes(mail(2))
    (root / "cur" / "1700000002.M3P2.host:2,RS").write_bytes(mail(3, cc="receipts@ap.example.com"))
    (root / "tmp" / "1700000003.M4P2.host").write_bytes(mail(4))
    (root / "dovecot.index").write_bytes(b"\x07\x02\x00\x00" + bytes(200))
    (root / "dovecot.index.log").write_bytes(bytes(100))
    (root / "dovecot-uidlist").write_text("3 V1700000000 N4\n1 :1700000000.M1P2.host\n")
    (root / "subscriptions").write_text("V\t2\n\nSent\n")
    (root / "cur" / ".hidden-by-mutt").write_bytes(mail(5))
    sent = root / ".Sent"  # a Maildir++ subfolder
    for sub in ("new", "cur", "tmp"):
        (sent / sub).mkdir(parents=True)
    (sent / "maildirfolder").write_bytes(b"")
    (sent / "cur" / "1700000010.M9P2.host:2,S").write_bytes(mail(6))
    return root


def outcomes(paths) -> tuple[list[str], dict[str, str]]:
    """(labels of the messages found, {path: reason} of what was skipped)."""
    found, skipped = [], {}
    for x in discover([str(p) for p in paths]):
        if isinstance(x, _Item):
            found.append(x.label)
        elif isinstance(x, ReplayOutcome):
            assert x.status == "skipped", x
            skipped[x.path] = x.reason
    return found, skipped


# --- what a mail looks like ------------------------------------------------------


@pytest.mark.parametrize("content, expected", [
    (b"From: a@x\nTo: b@x\nSubject: hi\n\nbody\n", "mail"),
    (b"Return-Path: <a@x>\r\nReceived: from x\r\n\tby y; Mon, 1 Jan 2024\r\n\r\nbody", "mail"),
    (b"X-Mailer: foo\nX-Other: bar\nMIME-Version: 1.0\n\n", "mail"),
    # Headers that span more than a KiB before the first mail field (ARC, DKIM...).
    (b"ARC-Seal: i=1; a=rsa-sha256;\n" + b"\tb=" + b"A" * 70 + b"\n" * 0 + (b"\t" + b"B" * 70 + b"\n") * 40
     + b"Subject: late\n\nbody", "mail"),
    (b"\xef\xbb\xbfFrom: a@x\nSubject: saved by Notepad\n\nx", "mail"),
    (b"   \nDelivered-To: a@x\nReceived: by x\n\nbody", "mail"),
    (b"From  : John Doe <jdoe@example>\nTo    : Mary\n\n", "mail"),  # RFC 2822 obsolete spacing
    (b"From MAILER-DAEMON Fri Jul  8 12:08:34 2011\nFrom: a@x\nSubject: s\n\nbody\n", "mbox"),
    (b"From the desk of the CFO\n\nPlease pay the attached invoice.\n", "not_a_mail"),
    (b"Subject: meeting notes\nWe agreed on the budget.\n", "not_a_mail"),
    (b"# Export\n\nThese are the invoices from March.\n", "not_a_mail"),
    (b"Name: Alice\nPhone: 555\n\n", "not_a_mail"),  # a header-like block, but no mail field
    (b"X-Only: a\n" * 2000, "not_a_mail"),  # headers forever without a mail field: give up at 16 KiB
    (JPEG, "not_a_mail"),
    (b"", "empty"),
])
def test_classify(tmp_path, content, expected):
    f = tmp_path / "f"
    f.write_bytes(content)
    assert classify(f) == expected


def test_maildir_new_and_cur_are_read_tmp_and_indexes_are_skipped(tmp_path):
    root = maildir(tmp_path / "Maildir")
    found, skipped = outcomes([root])
    assert sorted(Path(x).name for x in found) == [
        "1700000000.M1P2.host", "1700000001.M2P2.host:2,S", "1700000002.M3P2.host:2,RS", "1700000010.M9P2.host:2,S",
    ]
    assert {str(Path(p).relative_to(root)): r for p, r in skipped.items()} == {
        "tmp/1700000003.M4P2.host": "maildir_tmp",
        "dovecot.index": "mail_index",
        "dovecot.index.log": "mail_index",
        "dovecot-uidlist": "mail_index",
        "subscriptions": "mail_index",
        "cur/.hidden-by-mutt": "hidden",
        ".Sent/maildirfolder": "mail_index",
    }
    # Every outcome the walk yields is counted up front (the progress bar's total).
    assert count([str(root)]) == len(found) + len(skipped)


def test_files_are_mails_by_content_whatever_their_name(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    (d / "msg_001.txt").write_bytes(mail(1))
    (d / "msg_002.txt").write_bytes(mail(2))
    (d / "0001").write_bytes(mail(3))
    (d / "INBOX").write_bytes(b"From a@x Mon Jan  1 00:00:00 2024\n" + mail(4) + b"\nFrom b@x Mon Jan  1 00:00:01 2024\n"
                              + mail(5))
    (d / "README").write_text("Exported from Thunderbird.\n")
    (d / "scan.jpg").write_bytes(JPEG)
    (d / "empty.txt").write_bytes(b"")
    (d / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (d / ".git").mkdir()
    (d / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    found, skipped = outcomes([d])
    assert [Path(x).name for x in found] == ["0001", "INBOX#1", "INBOX#2", "msg_001.txt", "msg_002.txt"]
    assert {Path(p).name: r for p, r in skipped.items()} == {
        "README": "not_a_mail", "scan.jpg": "not_a_mail", "empty.txt": "empty", ".DS_Store": "hidden", ".git": "hidden",
    }


def test_mbox_messages_are_the_bytes_mailbox_gives(tmp_path):
    # The stdlib's mbox reader is the reference for where messages start and end.
    path = tmp_path / "archive"  # no extension
    box = mailbox.mbox(path)
    for i in range(5):
        box.add(mail(i, body=f"line one\n\nFrom here on, {i}\n"))  # mailbox escapes the body's "From "
    box.close()
    items = list(discover([str(path)]))
    assert isinstance(items[0], _More) and items[0].n == 4
    ours = [x.load() for x in items[1:]]
    ref = mailbox.mbox(path, create=False)
    assert ours == [ref.get_bytes(k) for k in ref.keys()]


def test_eml_is_a_mail_by_its_name(tmp_path):
    # Saved by Unix tools with the mbox "From " line on top, or with no headers:
    # a .eml is still one message and goes to ingest as it is.
    (tmp_path / "a.eml").write_bytes(b"From a@x Mon Jan  1 00:00:00 2024\n" + mail(1))
    (tmp_path / "b.eml").write_bytes(b"\nno headers at all\n")
    found, skipped = outcomes([tmp_path])
    assert [Path(x).name for x in found] == ["a.eml", "b.eml"] and not skipped


def test_walk_is_lazy_and_reads_files_only_when_loaded(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    (tmp_path / "a" / "1").write_bytes(mail(1))
    it = discover([str(tmp_path)])
    first = next(it)
    # b/ has not been listed yet, and a/1 has not been read into the item.
    (tmp_path / "b" / "2").write_bytes(mail(2))
    (tmp_path / "a" / "1").write_bytes(mail(1, body="rewritten after discovery"))
    rest = list(it)
    assert [Path(x.label).name for x in [first, *rest]] == ["1", "2"]
    assert b"rewritten after discovery" in first.load()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_skipped_with_the_reason(tmp_path):
    f = tmp_path / "locked"
    f.write_bytes(mail(1))
    f.chmod(0)
    found, skipped = outcomes([tmp_path])
    assert not found and skipped == {str(f): "unreadable"}


def test_missing_path_is_an_error(tmp_path):
    (x,) = discover([str(tmp_path / "nope")])
    assert (x.status, x.error) == ("error", "no such file or folder")


# --- through the CLI, into SQLite --------------------------------------------------


@pytest.fixture
def sqlite_cfg(tmp_path):
    db = tmp_path / "gateway.db"
    return write_config(tmp_path, f"sqlite+aiosqlite:///{db}"), db


def subjects(db: Path) -> list[str]:
    with sqlite3.connect(db) as c:
        return sorted(r[0] for r in c.execute("SELECT subject FROM emails"))


def test_cli_replays_a_maildir_and_lists_what_it_skipped(sqlite_cfg, tmp_path):
    cfg, db = sqlite_cfg
    root = maildir(tmp_path / "Maildir")
    p = gw(cfg, "replay", str(root))
    created = [x for x in p.stdout.splitlines() if x.startswith("created")]
    assert len(created) == 4
    skipped = [x for x in p.stdout.splitlines() if x.startswith("skipped")]
    assert len(skipped) == 7
    assert f"skipped   {root / 'tmp' / '1700000003.M4P2.host'}  maildir_tmp" in skipped
    assert f"skipped   {root / 'dovecot-uidlist'}  mail_index" in skipped
    # Skipped lines come last, just above the summary that counts them.
    assert p.stdout.splitlines()[-8:-1] == skipped
    assert p.stdout.splitlines()[-1] == "4 messages: 4 created, 0 duplicate, 0 rejected, 0 error; 7 files skipped"
    assert subjects(db) == ["Message 1", "Message 2", "Message 3", "Message 6"]


def test_cli_json_has_a_line_per_skipped_file(sqlite_cfg, tmp_path):
    cfg, db = sqlite_cfg
    d = tmp_path / "export"
    d.mkdir()
    for i in range(1, 4):
        (d / f"msg_{i:03}.txt").write_bytes(mail(i))
    (d / "2024-01-05_invoice").write_bytes(mail(4))
    box = mailbox.mbox(d / "Archive")
    for i in range(5, 25):
        box.add(mail(i))
    box.close()
    (d / "README.md").write_text("# invoices\n")
    (d / "photo.jpg").write_bytes(JPEG)
    p = gw(cfg, "replay", str(d), "--json", "--concurrency", "8")
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert sorted(x["status"] for x in lines) == ["created"] * 24 + ["skipped"] * 2
    assert {Path(x["path"]).name: x["reason"] for x in lines if x["status"] == "skipped"} == {
        "README.md": "not_a_mail", "photo.jpg": "not_a_mail",
    }
    assert all(set(x) == {"path", "status", "uploads", "error", "reason"} for x in lines)
    # Twenty mbox messages loaded concurrently each arrive whole: every subject is stored once.
    assert subjects(db) == sorted(f"Message {i}" for i in range(1, 25))
    assert "24 messages: 24 created, 0 duplicate, 0 rejected, 0 error; 2 files skipped" in p.stderr


def test_cli_folder_without_mail_exits_1(sqlite_cfg, tmp_path):
    cfg, db = sqlite_cfg
    d = tmp_path / "photos"
    d.mkdir()
    (d / "IMG_0001.jpg").write_bytes(JPEG)
    (d / "README").write_text("Holiday pictures.\n")
    p = gw(cfg, "replay", str(d), check_rc=1)
    assert f"error: no mail found under {d}" in p.stderr
    assert p.stdout.splitlines() == [
        f"skipped   {d / 'IMG_0001.jpg'}  not_a_mail",
        f"skipped   {d / 'README'}  not_a_mail",
        "0 messages: 0 created, 0 duplicate, 0 rejected, 0 error; 2 files skipped",
    ]
    p = gw(cfg, "replay", str(d), "--json", check_rc=1)
    assert json.loads(p.stderr.splitlines()[-1]) == {"detail": f"no mail found under {d}", "code": "no_mail"}
    assert [json.loads(x)["reason"] for x in p.stdout.splitlines()] == ["not_a_mail", "not_a_mail"]


def test_cli_progress_bar_on_a_terminal(sqlite_cfg, tmp_path):
    # stderr on a pseudo-terminal, as in an interactive shell; stdout stays a pipe.
    import pty
    import subprocess

    cfg, db = sqlite_cfg
    d = tmp_path / "in"
    d.mkdir()
    for i in range(30):
        (d / f"{i:04}").write_bytes(mail(i))
    (d / "notes.txt").write_text("not a mail\n")
    master, slave = pty.openpty()
    env = {**os.environ, "GATEWAY_CONFIG": str(cfg), "COLUMNS": "160", "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "replay", str(d)], stdout=subprocess.PIPE,
                            stderr=slave, env=env)
    os.close(slave)
    out = proc.stdout.read()
    err = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    assert proc.wait(timeout=120) == 0
    os.close(master)
    text = err.decode(errors="replace")
    assert "31/31" in text, text  # count/total: 30 messages and the skipped file
    assert "/s" in text and "eta" in text
    assert b"30 messages: 30 created" in out
