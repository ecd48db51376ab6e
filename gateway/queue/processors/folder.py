"""``folder``: drop a copy of the document into a directory (an ERP import folder).

Atomic: the copy is written to a hidden temp file in the target directory,
given its ``mode`` (default 0640, whatever the daemon's umask, so an importer in
the folder's group can read it), fsynced, then given its name with ``link()``,
which never replaces an existing file. A reader polling the folder never sees a
half-written file, and two workers (or two instances) choosing the same name
cannot overwrite each other.

A name costs at most three tries, however many files share it: the name itself,
then ``name-<task_id>.ext`` (a task id is unique, and the same task asks for the
same name again on a retry), then ``name-<task_id>-<sha256 prefix>.ext`` (only
if something else sits on that one). A file already there with the same content
counts as delivered, so a retried task is not copied twice under a new name.

The name comes from ``name_pattern`` and is then made safe as one path component:
nothing a sender put in a filename can leave the directory. Errors name "the
drop folder", never its path: ``last_error`` is readable with any ``task.read`` key.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import tempfile
from pathlib import Path

from gateway.observability import get_logger
from gateway.parse import sanitize_filename
from gateway.queue.processors import Job, Outcome, ProcessorFailed, RetryLater
from gateway.queue.processors.command import expand

_CHUNK = 1024 * 1024

log = get_logger()


def safe_name(pattern: str, job: Job) -> str:
    values = job.placeholders()
    values.pop("path", None)  # the blob's own path has no place in a name
    name = expand([pattern], values)[0].replace("/", "_").replace("\\", "_")
    return sanitize_filename(name, fallback=f"{job.upload_id}-{job.task_id}")


def candidates(name: str, task_id: int, sha256: str) -> list[str]:
    stem, dot, ext = name.rpartition(".")
    if not stem:  # no extension (or a name starting with a dot, already stripped)
        stem, dot, ext = name, "", ""
    # safe_name caps a name at 200 bytes, so these stay within NAME_MAX (255).
    return [name, f"{stem}-{task_id}{dot}{ext}", f"{stem}-{task_id}-{sha256[:12]}{dot}{ext}"]


def _has_content(path: Path, size: int, sha256: str) -> bool:
    """Whether ``path`` holds these bytes; the size is compared first so that a
    clash with a different file rarely costs a read."""
    try:
        if path.stat().st_size != size:
            return False
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest() == sha256
    except OSError:
        return False


def deliver(src: Path, directory: Path, name: str, *, task_id: int, sha256: str, mode: int) -> Path:
    """Blocking: copy ``src`` into ``directory`` under a free variant of ``name``."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".gateway-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            while chunk := inp.read(_CHUNK):
                out.write(chunk)
            # fchmod is not masked by the umask (mkstemp's 0600 would be).
            os.fchmod(out.fileno(), mode)
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        for candidate in candidates(name, task_id, sha256):
            final = directory / candidate
            try:
                os.link(tmp, final)
            except FileExistsError:
                if _has_content(final, size, sha256):
                    return final  # delivered by an earlier attempt (or the same bytes by another task)
                continue
            _fsync_dir(directory)
            return final
        raise ProcessorFailed(
            f"no free name for {name!r} in the drop folder: it and {candidates(name, task_id, sha256)[-1]!r}"
            " are taken by other files"
        )
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderProcessor:
    type = "folder"

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    async def run(self, job: Job) -> Outcome:
        name = safe_name(self.cfg.name_pattern, job)
        try:
            final = await asyncio.to_thread(
                deliver, job.path, Path(self.cfg.path), name, task_id=job.task_id, sha256=job.sha256, mode=self.cfg.mode
            )
        except ProcessorFailed:
            raise
        except OSError as e:
            # A full disk or a mount that went away may come back by itself; a
            # permission or read-only problem needs a person (then `tasks retry`).
            # The path is for the log, not for last_error (see the module doc).
            why = e.strerror or type(e).__name__
            log.warning("folder.write_failed", task_id=job.task_id, folder=str(self.cfg.path), error=str(e))
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise ProcessorFailed(f"cannot write to the drop folder: {why}") from e
            raise RetryLater(f"cannot write to the drop folder: {why}") from e
        return Outcome(result={"path": str(final), "name": final.name})
