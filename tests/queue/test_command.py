"""The command processor with real subprocesses."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path

import pytest

from gateway.config import CommandProcessor as CommandSettings
from gateway.queue.processors import Job, ProcessorFailed, RetryLater
from gateway.queue.processors.command import CommandProcessor


def make_job(tmp_path: Path, filename: str = "invoice.pdf") -> Job:
    data = b"%PDF-1.7 body"
    p = tmp_path / "blob"
    p.write_bytes(data)
    return Job(
        task_id=11, upload_id=4, document_id=9, queue="invoices", attempt=2, path=p, filename=filename,
        content_type="application/pdf", size=len(data), sha256=hashlib.sha256(data).hexdigest(),
        metadata={"task": {"id": 11}, "email": {"subject": "Hello"}},
    )


def py(code: str, *args: str, **kw) -> CommandProcessor:
    return CommandProcessor(CommandSettings(type="command", argv=[sys.executable, "-c", code, *args], **kw))


async def test_exit_0_with_json_is_the_result_and_placeholders_are_filled(tmp_path):
    code = (
        "import json, os, sys; print(json.dumps({'argv': sys.argv[1:], 'data': open(sys.argv[1], 'rb').read().decode(),"
        " 'env': {k: v for k, v in os.environ.items() if k.startswith('GATEWAY_') or k == 'EXTRA'}}))"
    )
    p = py(code, "{path}", "{filename}", "{task_id}", "{upload_id}", "{document_id}", "{literal}", env={"EXTRA": "x"})
    job = make_job(tmp_path, filename="a; rm -rf $HOME.pdf")
    out = await p.run(job)
    r = out.result
    copy = Path(r["argv"][0])
    assert copy != job.path and copy.name == "a; rm -rf $HOME.pdf"  # its own copy, under the document's name
    assert r["argv"][1:] == ["a; rm -rf $HOME.pdf", "11", "4", "9", "{literal}"]  # no shell, literal kept
    assert r["data"] == "%PDF-1.7 body"
    env = r["env"]
    assert env["GATEWAY_PATH"] == str(copy)
    assert env["GATEWAY_TASK_ID"] == "11" and env["GATEWAY_UPLOAD_ID"] == "4" and env["GATEWAY_DOCUMENT_ID"] == "9"
    assert env["GATEWAY_FILENAME"] == "a; rm -rf $HOME.pdf" and env["GATEWAY_ATTEMPT"] == "2" and env["EXTRA"] == "x"
    assert json.loads(env["GATEWAY_METADATA"]) == job.metadata
    assert out.review is False


async def test_exit_0_without_json_has_no_result(tmp_path):
    out = await py("print('done, thanks')").run(make_job(tmp_path))
    assert out.result is None


async def test_json_asking_for_review(tmp_path):
    out = await py("print('{\"review\": true}')").run(make_job(tmp_path))
    assert out.review is True


async def test_exit_75_is_retried(tmp_path):
    with pytest.raises(RetryLater) as e:
        await py("import sys; sys.stderr.write('ERP locked\\n'); sys.exit(75)").run(make_job(tmp_path))
    assert "exit 75" in str(e.value) and "ERP locked" in str(e.value)


async def test_other_exit_fails_with_the_tail_of_stderr(tmp_path):
    code = "import sys; sys.stderr.write('x' * 5000 + '\\nTraceback: bad total\\n'); sys.exit(1)"
    with pytest.raises(ProcessorFailed) as e:
        await py(code).run(make_job(tmp_path))
    msg = str(e.value)
    assert msg.startswith("command exited 1: …") and msg.endswith("Traceback: bad total")
    assert len(msg) < 2100


async def test_timeout_kills_the_process_group_and_retries(tmp_path):
    marker = tmp_path / "child.pid"
    # The child spawns a grandchild that would outlive a plain kill of the child.
    code = (
        "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        f" open({str(marker)!r}, 'w').write(str(c.pid)); time.sleep(60)"
    )
    started = time.monotonic()
    with pytest.raises(RetryLater) as e:
        await py(code, timeout=1.0).run(make_job(tmp_path))
    assert "timed out" in str(e.value)
    assert time.monotonic() - started < 30
    grandchild = int(marker.read_text())
    for _ in range(100):
        try:
            with open(f"/proc/{grandchild}/stat") as fh:
                state = fh.read().split(")")[-1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        raise AssertionError("grandchild still running")


async def test_missing_program_fails(tmp_path):
    p = CommandProcessor(CommandSettings(type="command", argv=[str(tmp_path / "nope")]))
    with pytest.raises(ProcessorFailed) as e:
        await p.run(make_job(tmp_path))
    assert "cannot run" in str(e.value)


async def test_huge_output_is_bounded(tmp_path):
    from gateway.queue.processors.command import MAX_STDERR

    code = "import sys; sys.stdout.write('x' * 5_000_000); sys.stderr.write('e' * 3_000_000 + 'END'); sys.exit(1)"
    with pytest.raises(ProcessorFailed) as e:
        await py(code).run(make_job(tmp_path))
    assert str(e.value).endswith("eeeEND") and len(str(e.value)) < MAX_STDERR


async def test_a_command_that_rewrites_its_input_leaves_the_stored_blob_alone(tmp_path, monkeypatch):
    job = make_job(tmp_path)
    monkeypatch.chdir(tmp_path)  # the daemon's folder
    before = job.path.read_bytes()
    seen = tmp_path / "seen"
    # Like `ocrmypdf f f` or `exiftool -overwrite_original`: write over {path} in place,
    # then report where it ran, so we can check the work folder is gone afterwards.
    p = CommandProcessor(CommandSettings(
        type="command",
        argv=["sh", "-c", 'echo x > "$1" && pwd > "$2" && echo out > result.txt', "sh", "{path}", str(seen)],
    ))
    await p.run(job)
    assert job.path.read_bytes() == before
    assert hashlib.sha256(job.path.read_bytes()).hexdigest() == job.sha256
    workdir = Path(seen.read_text().strip())
    assert workdir != tmp_path and not workdir.exists()  # ran in a private folder, removed after
    assert not (tmp_path / "result.txt").exists()


async def test_the_work_folder_is_removed_after_a_failure_and_a_timeout(tmp_path):
    seen = tmp_path / "seen"
    for argv, error in (
        (["sh", "-c", 'pwd > "$1"; exit 3', "sh", str(seen)], ProcessorFailed),
        (["sh", "-c", 'pwd > "$1"; exec sleep 30', "sh", str(seen)], RetryLater),
    ):
        p = CommandProcessor(CommandSettings(type="command", argv=argv, timeout=1.0))
        with pytest.raises(error):
            await p.run(make_job(tmp_path))
        assert not Path(seen.read_text().strip()).exists()


@pytest.mark.parametrize("filename", ["-rf.pdf", "--help.pdf", "-"])
async def test_a_name_starting_with_a_dash_never_reaches_the_command_as_an_option(tmp_path, filename):
    code = "import json, os, sys; print(json.dumps({'argv': sys.argv[1:], 'data': [open(a, 'rb').read().decode() for a in sys.argv[1:]]}))"
    out = await py(code, "{path}", "{filename}").run(make_job(tmp_path, filename=filename))
    path, name = out.result["argv"]
    assert not path.startswith("-") and not name.startswith("-")
    assert name == "./" + filename and Path(path).name == filename
    # Both name the document's copy (the command runs in its work folder).
    assert out.result["data"] == ["%PDF-1.7 body", "%PDF-1.7 body"]


async def test_placeholders_in_a_filename_are_not_expanded(tmp_path):
    out = await py("import json, sys; print(json.dumps(sys.argv[1:]))", "{filename}").run(
        make_job(tmp_path, filename="{task_id}{sha256}.pdf")
    )
    assert out.result == ["{task_id}{sha256}.pdf"]


async def test_a_relative_program_path_still_means_the_daemons_folder(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "extract"
    script.write_text('#!/bin/sh\necho \'{"ok": true}\'\n')
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    out = await CommandProcessor(CommandSettings(type="command", argv=["bin/extract", "{path}"])).run(make_job(tmp_path))
    assert out.result == {"ok": True}


async def test_an_unreadable_blob_is_retried_without_a_server_path(tmp_path):
    job = make_job(tmp_path)
    job.path.unlink()
    with pytest.raises(RetryLater) as e:
        await py("print(1)").run(job)
    assert "cannot copy" in str(e.value) and str(tmp_path) not in str(e.value)


async def test_a_cancelled_run_kills_the_command_and_removes_its_work_folder(tmp_path):
    seen = tmp_path / "seen"
    p = CommandProcessor(CommandSettings(type="command", argv=["sh", "-c", 'pwd > "$1"; exec sleep 30', "sh", str(seen)]))
    run = asyncio.ensure_future(p.run(make_job(tmp_path)))
    for _ in range(200):
        if seen.exists() and seen.read_text():
            break
        await asyncio.sleep(0.02)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    workdir = Path(seen.read_text().strip())
    for _ in range(100):
        if not workdir.exists():
            break
        await asyncio.sleep(0.02)
    assert not workdir.exists()
