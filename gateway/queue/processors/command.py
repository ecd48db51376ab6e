"""``command``: run a program for each document.

The argv is run directly (no shell, so nothing in a filename can become a
command); ``{path}``, ``{filename}``, ``{task_id}``, ``{upload_id}``,
``{document_id}``, ``{sha256}`` and ``{queue}`` in any argument are replaced, and
nothing else is interpreted (a literal ``{`` stays as it is). The same facts are in
the environment as ``GATEWAY_TASK_ID``… plus ``GATEWAY_METADATA`` (JSON).

Exit 0 is done (a JSON object on stdout becomes the task's result), 75
(EX_TEMPFAIL) is "try again later", anything else fails the task with the tail of
stderr. A program that outlives its timeout is killed (its whole process group)
and the task is retried.

Each run gets a private work folder (in the system temp folder, ``$TMPDIR``)
holding its own copy of the document, and runs in it: ``{path}`` is that copy
and ``{filename}`` its name, so a program that rewrites its input
(``ocrmypdf f f``, ``exiftool -overwrite_original``) or drops output files in
its working folder never touches the stored blob, which other documents may
share. The folder is removed when the run ends. A name starting with ``-`` is
given as ``./-name``, so it never reaches the program as an option. A relative
program path (``bin/extract``) still means the daemon's own folder; other
relative arguments now mean the work folder.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

from gateway.mime import sanitize_filename
from gateway.queue.processors import Job, Outcome, ProcessorFailed, RetryLater, tail, wants_review

EX_TEMPFAIL = 75
# Output beyond these is read and dropped, so a chatty program cannot fill our
# memory: a result is meant to be a small JSON object, and only stderr's tail is kept.
MAX_STDOUT = 1024 * 1024
MAX_STDERR = 64 * 1024


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def expand(argv: list[str], values: dict[str, str]) -> list[str]:
    # One pass: a filename such as "{task_id}.pdf" is data, not a placeholder.
    return [_PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), arg) for arg in argv]


def local_name(filename: str) -> str:
    """The copy's name in the work folder: the document's own name when it is one
    plain path component (tools look at extensions), else a sanitized one."""
    if filename and "/" not in filename and "\x00" not in filename and filename not in (".", ".."):
        try:
            if len(filename.encode("utf-8")) <= 255:
                return filename
        except UnicodeEncodeError:  # a lone surrogate
            pass
    return sanitize_filename(filename, fallback="document")


def _make_workspace(src: Path, filename: str) -> Path:
    """Blocking: a private folder holding a copy of ``src``; returns the copy's path."""
    folder = Path(tempfile.mkdtemp(prefix="gateway-command-"))
    try:
        copy = folder / local_name(filename)
        shutil.copyfile(src, copy)
        return copy
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _remove_workspace(copy: Path) -> None:
    shutil.rmtree(copy.parent, ignore_errors=True)


class CommandProcessor:
    type = "command"

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def _env(self, job: Job, values: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.cfg.env)
        for k, v in values.items():
            env[f"GATEWAY_{k.upper()}"] = v
        env["GATEWAY_CONTENT_TYPE"] = job.content_type
        env["GATEWAY_ATTEMPT"] = str(job.attempt)
        env["GATEWAY_METADATA"] = json.dumps(job.metadata, ensure_ascii=False, default=str)
        return env

    async def run(self, job: Job) -> Outcome:
        made = asyncio.ensure_future(asyncio.to_thread(_make_workspace, job.path, job.filename))
        try:
            copy = await asyncio.shield(made)
        except asyncio.CancelledError:
            # The copy goes on in its thread: remove what it leaves once it ends.
            made.add_done_callback(_remove_when_made)
            raise
        except OSError as e:
            # No server path: last_error is readable with any task.read key.
            raise RetryLater(f"cannot copy the document for the command: {e.strerror or type(e).__name__}") from e
        try:
            return await self._run(job, copy)
        finally:
            # In a thread that finishes even if this task is cancelled meanwhile.
            await asyncio.to_thread(_remove_workspace, copy)

    async def _run(self, job: Job, copy: Path) -> Outcome:
        values = job.placeholders()
        values["path"] = str(copy)
        values["filename"] = "./" + copy.name if copy.name.startswith("-") else copy.name
        argv = expand(self.cfg.argv, values)
        if "/" in argv[0] and not os.path.isabs(argv[0]):
            # The program was configured relative to the daemon's folder, not the work folder.
            argv[0] = os.path.abspath(argv[0])
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(job, values),
                cwd=copy.parent,
                # Its own process group, so a timeout kills its children too.
                start_new_session=True,
            )
        except OSError as e:
            # A missing or non-executable program will not fix itself.
            raise ProcessorFailed(f"cannot run {self.cfg.argv[0]!r}: {e.strerror or type(e).__name__}") from e
        try:
            stdout, stderr, _ = await asyncio.wait_for(
                asyncio.gather(_read(proc.stdout, MAX_STDOUT), _read(proc.stderr, MAX_STDERR, tail=True), proc.wait()),
                self.cfg.timeout,
            )
        except asyncio.TimeoutError:
            _kill(proc)
            await proc.wait()
            raise RetryLater(f"command timed out after {self.cfg.timeout:g}s") from None
        except asyncio.CancelledError:
            # The worker is stopping: leave no orphan behind, nor a zombie
            # whose transport outlives the loop.
            _kill(proc)
            await proc.wait()
            raise
        code = proc.returncode
        if code == 0:
            result = None
            text = stdout.strip()
            if text:
                try:
                    result = json.loads(text)
                except ValueError:
                    result = None
            return Outcome(result=result, review=wants_review(result))
        err = tail(stderr) or "(no stderr)"
        if code == EX_TEMPFAIL:
            raise RetryLater(f"command asked to retry (exit 75): {err}")
        if code < 0:
            raise ProcessorFailed(f"command killed by signal {-code}: {err}")
        raise ProcessorFailed(f"command exited {code}: {err}")


async def _read(stream: asyncio.StreamReader, cap: int, *, tail: bool = False) -> bytes:
    """Read to EOF keeping at most ``cap`` bytes (the first ones, or the last)."""
    buf = bytearray()
    while chunk := await stream.read(65536):
        buf += chunk
        if len(buf) > cap:
            if tail:
                del buf[: len(buf) - cap]
            else:
                del buf[cap:]
    return bytes(buf)


def _remove_when_made(made: asyncio.Future) -> None:
    if not made.cancelled() and made.exception() is None:
        asyncio.get_running_loop().run_in_executor(None, functools.partial(_remove_workspace, made.result()))


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
