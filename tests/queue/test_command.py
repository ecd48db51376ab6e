"""The command processor with real subprocesses."""

from __future__ import annotations

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
    assert r["argv"] == [str(job.path), "a; rm -rf $HOME.pdf", "11", "4", "9", "{literal}"]  # no shell, literal kept
    assert r["data"] == "%PDF-1.7 body"
    env = r["env"]
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
