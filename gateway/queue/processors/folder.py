"""``folder``: drop a copy of the document into a directory (an ERP import folder).

Atomic: the copy is written to a hidden temp file in the target directory,
fsynced, then given its name with ``link()``, which never replaces an existing
file. A reader polling the folder never sees a half-written file, and two workers
(or two instances) choosing the same name cannot overwrite each other: the loser
takes ``name-1.ext``, ``name-2.ext``… A file already there with the same content
counts as delivered (a retried task is not copied twice under a new name).

The name comes from ``name_pattern`` and is then made safe as one path component:
nothing a sender put in a filename can leave the directory.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import tempfile
from pathlib import Path

from gateway.parse import sanitize_filename
from gateway.queue.processors import Job, Outcome, ProcessorFailed, RetryLater
from gateway.queue.processors.command import expand

MAX_SUFFIX = 1000
_CHUNK = 1024 * 1024


def safe_name(pattern: str, job: Job) -> str:
    values = job.placeholders()
    values.pop("path", None)  # the blob's own path has no place in a name
    name = expand([pattern], values)[0].replace("/", "_").replace("\\", "_")
    return sanitize_filename(name, fallback=f"{job.upload_id}-{job.task_id}")


def candidates(name: str):
    yield name
    stem, dot, ext = name.rpartition(".")
    if not stem:  # no extension (or a name starting with a dot, already stripped)
        stem, dot, ext = name, "", ""
    for i in range(1, MAX_SUFFIX):
        yield f"{stem}-{i}{dot}{ext}"


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def deliver(src: Path, directory: Path, name: str, sha256: str) -> Path:
    """Blocking: copy ``src`` into ``directory`` under a free variant of ``name``."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".gateway-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            while chunk := inp.read(_CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        for candidate in candidates(name):
            final = directory / candidate
            try:
                os.link(tmp, final)
            except FileExistsError:
                try:
                    if _sha256_of(final) == sha256:
                        return final  # delivered by an earlier attempt
                except OSError:
                    pass
                continue
            _fsync_dir(directory)
            return final
        raise ProcessorFailed(f"no free name for {name!r} in {directory} after {MAX_SUFFIX} tries")
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
            final = await asyncio.to_thread(deliver, job.path, Path(self.cfg.path), name, job.sha256)
        except ProcessorFailed:
            raise
        except OSError as e:
            # A full disk or a mount that went away may come back by itself; a
            # permission or read-only problem needs a person (then `tasks retry`).
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise ProcessorFailed(f"cannot write to {self.cfg.path}: {e.strerror}") from e
            raise RetryLater(f"cannot write to {self.cfg.path}: {e.strerror or e}") from e
        return Outcome(result={"path": str(final), "name": final.name})
