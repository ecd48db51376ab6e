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
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

from gateway.queue.processors import Job, Outcome, ProcessorFailed, RetryLater, tail, wants_review

EX_TEMPFAIL = 75
# Output beyond these is read and dropped, so a chatty program cannot fill our
# memory: a result is meant to be a small JSON object, and only stderr's tail is kept.
MAX_STDOUT = 1024 * 1024
MAX_STDERR = 64 * 1024


def expand(argv: list[str], values: dict[str, str]) -> list[str]:
    out = []
    for arg in argv:
        for k, v in values.items():
            arg = arg.replace("{" + k + "}", v)
        out.append(arg)
    return out


class CommandProcessor:
    type = "command"

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def _env(self, job: Job) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.cfg.env)
        for k, v in job.placeholders().items():
            env[f"GATEWAY_{k.upper()}"] = v
        env["GATEWAY_CONTENT_TYPE"] = job.content_type
        env["GATEWAY_ATTEMPT"] = str(job.attempt)
        env["GATEWAY_METADATA"] = json.dumps(job.metadata, ensure_ascii=False, default=str)
        return env

    async def run(self, job: Job) -> Outcome:
        argv = expand(self.cfg.argv, job.placeholders())
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(job),
                # Its own process group, so a timeout kills its children too.
                start_new_session=True,
            )
        except OSError as e:
            # A missing or non-executable program will not fix itself.
            raise ProcessorFailed(f"cannot run {argv[0]!r}: {e.strerror or e}") from e
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
            # The worker is stopping: leave no orphan behind.
            _kill(proc)
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


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
