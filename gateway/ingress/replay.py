"""`gateway replay`: .eml files, folders and mbox files through the same ingest().

Each message yields one ``ReplayOutcome``; the CLI prints them. Ingest runs with
bounded concurrency (the Ingestor's own limit plus a window here, so a folder of
100,000 files is not read into memory at once).
"""

from __future__ import annotations

import asyncio
import mailbox
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Iterator

from gateway.errors import GatewayError, PermanentError, TemporaryError
from gateway.ingest import Envelope, Ingestor


@dataclass
class ReplayOutcome:
    path: str
    status: str  # created | duplicate | rejected | error
    uploads: list[dict] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        return {"path": self.path, "status": self.status, "uploads": self.uploads, "error": self.error}


@dataclass
class _Item:
    label: str
    load: callable  # () -> bytes


def _is_mbox(path: Path) -> bool:
    if path.suffix.lower() == ".mbox":
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(5)
    except OSError:
        return False
    return head == b"From " and path.suffix.lower() != ".eml"


def _mbox_items(path: Path) -> Iterator[_Item]:
    box = mailbox.mbox(path, create=False)
    for i, key in enumerate(box.keys(), 1):
        yield _Item(f"{path}#{i}", lambda key=key: box.get_bytes(key))


def discover(paths: list[str]) -> Iterator[_Item | ReplayOutcome]:
    """Every message under ``paths``; a path that can't be read becomes an error outcome."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in (".eml", ".mbox"))
            for f in files:
                yield from _file_items(f)
        elif p.is_file():
            yield from _file_items(p)
        else:
            yield ReplayOutcome(str(p), "error", error="no such file or folder")


def _file_items(f: Path) -> Iterator[_Item | ReplayOutcome]:
    if _is_mbox(f):
        try:
            yield from _mbox_items(f)
        except (OSError, mailbox.Error) as e:
            yield ReplayOutcome(str(f), "error", error=f"cannot read mbox: {e}")
    else:
        yield _Item(str(f), f.read_bytes)


async def replay(
    ingestor: Ingestor,
    paths: list[str],
    *,
    queue: str | None = None,
    concurrency: int = 4,
) -> AsyncIterator[ReplayOutcome]:
    """Yield one outcome per message, in completion order."""
    window = asyncio.Semaphore(concurrency * 2)
    results: asyncio.Queue[ReplayOutcome | None] = asyncio.Queue()

    async def one(item: _Item) -> None:
        try:
            try:
                raw = await asyncio.to_thread(item.load)
            except OSError as e:
                await results.put(ReplayOutcome(item.label, "error", error=f"cannot read: {e.strerror or e}"))
                return
            await results.put(await _ingest_one(ingestor, item.label, raw, queue))
        finally:
            window.release()

    async def feed() -> None:
        tasks = set()
        try:
            for item in await asyncio.to_thread(lambda: list(discover(paths))):
                if isinstance(item, ReplayOutcome):
                    await results.put(item)
                    continue
                await window.acquire()
                t = asyncio.create_task(one(item))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            await results.put(None)

    feeder = asyncio.create_task(feed())
    try:
        while (outcome := await results.get()) is not None:
            yield outcome
    finally:
        feeder.cancel()


async def _ingest_one(ingestor: Ingestor, label: str, raw: bytes, queue: str | None) -> ReplayOutcome:
    try:
        result = await ingestor.ingest(raw, "replay", Envelope(extra={"path": label}), queues=[queue] if queue else None)
    except PermanentError as e:
        return ReplayOutcome(label, "rejected", error=str(e))
    except (TemporaryError, GatewayError) as e:
        return ReplayOutcome(label, "error", error=str(e))
    except Exception as e:  # a bug must not stop a replay of thousands of files
        return ReplayOutcome(label, "error", error=f"{type(e).__name__}: {e}")
    return ReplayOutcome(
        label,
        result.status,
        uploads=[{"id": u.id, "queue": u.queue, "tasks": u.task_ids} for u in result.uploads],
    )
