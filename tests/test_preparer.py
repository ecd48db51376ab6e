"""The helper processes that parse messages and write their blobs (gateway.preparer).

Real processes (``python -m gateway.preparer``) over real pipes: the same results
as the in-thread path, a helper that dies fails its requests with a temporary
error and is replaced, service-stop signals do not kill it, and it exits when its
parent dies.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from structlog.testing import capture_logs

from gateway.errors import NoRoute, TemporaryError
from gateway import preparer as preparer_module
from gateway.preparer import Preparer, PreparerConfig, PreparerProcesses
from gateway.storage import blobs as blobs_mod
from gateway.storage.blobs import LocalBlobStore
from gateway.config import settings_from_dict
from tests.conftest import CORPUS, FIXTURES, base_config

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def config(tmp_path):
    settings = settings_from_dict(base_config(f"sqlite+aiosqlite:///{tmp_path / 'db'}", tmp_path), tmp_path)
    LocalBlobStore(settings.storage.root).ensure()
    return PreparerConfig.from_settings(settings)


@pytest.fixture
async def helpers(config):
    procs = PreparerProcesses(config, 1)
    yield procs
    await procs.close()


def _samples() -> list[bytes]:
    # The corpus slice only where the corpus is (a bare clone has none).
    corpus = sorted(CORPUS.rglob("*.eml"))[::25] if CORPUS.is_dir() else []
    files = sorted(FIXTURES.glob("*.eml")) + corpus
    return [p.read_bytes() for p in files]


async def test_helpers_give_what_the_thread_path_gives(config, helpers, tmp_path):
    """Fixtures and a slice of the corpus: the same parse, routes, documents and
    blob hashes from a helper process as from Preparer in this process."""
    local = Preparer(config, LocalBlobStore(tmp_path / "local-blobs"))
    samples = _samples()
    assert len(samples) > (40 if CORPUS.is_dir() else 20)
    for raw in samples:
        try:
            expected = local.prepare(raw, [], ["invoices"], sync=False)
        except NoRoute:
            continue
        got = await helpers.prepare(raw, [], ["invoices"])
        # A helper answers without the documents' bytes (it wrote the blobs).
        preparer_module._strip(expected)
        assert got.parsed == expected.parsed
        assert got.routes == expected.routes
        assert got.raw_sha == expected.raw_sha
        assert [(d, sha) for d, sha in got.docs] == [(d, sha) for d, sha in expected.docs]
        # The helper wrote the blobs into the configured root.
        store = LocalBlobStore(config.root)
        assert store.open_path(got.raw_sha).read_bytes() == raw


async def test_a_permanent_error_crosses_the_pipe(helpers):
    with pytest.raises(NoRoute, match="no recipient routes"):
        await helpers.prepare(b"From: a@b.example\r\nTo: nobody@else.example\r\n\r\nhi\r\n", [], None)
    # ... and the helper goes on serving.
    got = await helpers.prepare(b"To: invoices@ap.example.com\r\n\r\nhi\r\n", [], None)
    assert [r.queue for r in got.routes] == ["invoices"]


async def test_requests_are_pipelined_and_answered_by_id(helpers):
    raws = [f"To: invoices@ap.example.com\r\nSubject: n{i}\r\n\r\nbody {i}\r\n".encode() for i in range(50)]
    got = await asyncio.gather(*(helpers.prepare(r, [], None) for r in raws))
    assert [g.parsed.subject for g in got] == [f"n{i}" for i in range(50)]


async def test_a_helper_killed_mid_request_fails_it_temporarily_and_is_replaced(helpers):
    raw = b"To: invoices@ap.example.com\r\n\r\nhi\r\n"
    await helpers.prepare(raw, [], None)
    (helper,) = helpers.helpers
    pid = helper.proc.pid
    os.kill(pid, signal.SIGSTOP)  # the request below waits in its pipe
    pending = asyncio.create_task(helpers.prepare(raw + b"again\r\n", [], None))
    await asyncio.sleep(0.2)
    assert not pending.done()
    with capture_logs() as logs:
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(TemporaryError, match="parser process"):
            await asyncio.wait_for(pending, 30)
    assert [(e["event"], e["pid"], e["failed_requests"]) for e in logs if e["event"] == "preparer.exited"] == [
        ("preparer.exited", pid, 1)
    ]
    # The next request starts a new helper.
    got = await helpers.prepare(raw + b"third\r\n", [], None)
    body_sha = got.docs[0][1]
    assert LocalBlobStore(helpers.config.root).open_path(body_sha).read_bytes().endswith(b"third\r\n")
    assert [h.proc.pid for h in helpers.helpers] != [pid]


async def test_sigterm_and_sigint_do_not_stop_a_helper(helpers):
    """systemd signals the whole control group on stop; the daemon decides when
    its helpers' work ends (by closing their stdin)."""
    raw = b"To: invoices@ap.example.com\r\n\r\nhi\r\n"
    await helpers.prepare(raw, [], None)
    (helper,) = helpers.helpers
    os.kill(helper.proc.pid, signal.SIGTERM)
    os.kill(helper.proc.pid, signal.SIGINT)
    await asyncio.sleep(0.3)
    assert helper.proc.returncode is None
    await helpers.prepare(raw + b"more\r\n", [], None)
    await helpers.close()
    assert helper.proc.returncode == 0


async def test_blobs_written_by_a_helper_are_flushed_by_the_parent(runtime, monkeypatch):
    """The helper writes without fsync where syncfs exists; the parent's flush
    before the commit must then have something to flush."""
    if blobs_mod._syncfs is None:
        pytest.skip("no syncfs(2): helpers fsync their own blobs")
    calls = []
    real = blobs_mod._syncfs
    monkeypatch.setattr(blobs_mod, "_syncfs", lambda fd: (calls.append(fd), real(fd))[1])
    assert runtime.settings.storage.parse_processes == 1
    r = await runtime.ingestor.ingest(b"To: invoices@ap.example.com\r\nMessage-ID: <p@x>\r\n\r\nhi\r\n", "replay")
    assert r.status == "created"
    assert runtime.ingestor._processes.helpers, "not prepared by a helper"
    assert len(calls) == 1


def test_a_helper_exits_when_its_parent_dies(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        f"""
import asyncio
from gateway.preparer import PreparerConfig, PreparerProcesses

async def main():
    procs = PreparerProcesses(PreparerConfig({str(tmp_path / 'root')!r}, 3, (("q", ("q@x.example",)),)), 1)
    await procs.prepare(b"To: q@x.example\\r\\n\\r\\nhi\\r\\n", [], None)
    print(procs.helpers[0].proc.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""
    )
    LocalBlobStore(tmp_path / "root").ensure()
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        # (Unconfigured structlog prints its lines to stdout too.)
        helper_pid = int(next(line for line in parent.stdout if line.strip().isdigit()))
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(helper_pid, 0)
            except ProcessLookupError:
                return
            # A zombie is gone too (reparented, not yet reaped).
            try:
                with open(f"/proc/{helper_pid}/stat") as f:
                    if f.read().rpartition(")")[2].split()[0] == "Z":
                        return
            except FileNotFoundError:
                return
            time.sleep(0.1)
        raise AssertionError("the helper outlived its parent")
    finally:
        parent.kill()


async def test_close_while_a_helper_starts_leaves_no_helper_running(config, monkeypatch):
    """A helper whose start was under way when close() ran is closed too: it
    must not outlive the runtime (and hold its parent's stderr open)."""
    import gateway.preparer as preparer

    started = []
    real_start = preparer._Helper.start

    async def recording_start(cfg):
        helper = await real_start(cfg)
        started.append(helper)
        return helper

    monkeypatch.setattr(preparer._Helper, "start", staticmethod(recording_start))
    procs = PreparerProcesses(config, 1)
    pending = asyncio.create_task(procs.prepare(b"To: invoices@ap.example.com\r\n\r\nhi\r\n", [], None))
    await asyncio.sleep(0)  # the start is under way
    await procs.close()
    with pytest.raises(TemporaryError, match="shutting down"):
        await asyncio.wait_for(pending, 30)
    assert len(started) == 1
    assert started[0].proc.wait(30) == 0
