"""`gateway replay`: mail files, Maildirs, mbox files and folders through the same ingest().

What is a mail is decided by content, whatever the extension: a file whose
first KiB is an RFC 5322 header block is one message, a file that starts with
an mbox ``From `` line followed by headers is an mbox, a folder with ``cur/``
and ``new/`` is a Maildir; a ``.eml`` file is one message by its name. Everything else found in a folder (a README, a JPEG, Dovecot's index
files, Maildir's ``tmp/``) becomes a ``skipped`` outcome with a reason, so the
user sees what was left out.

Each message yields one ``ReplayOutcome``; the CLI prints them. Folders are
walked lazily in a worker thread and ingest runs with bounded concurrency
(the Ingestor's own limit plus a window here), so a folder of 100,000 files
is neither listed into memory at once nor read into it.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import AsyncIterator, Callable, Iterable, Iterator

from gateway.errors import GatewayError, PermanentError, TemporaryError
from gateway.ingest import Envelope, Ingestor


@dataclass
class ReplayOutcome:
    path: str
    status: str  # created | duplicate | rejected | error | skipped
    uploads: list[dict] = field(default_factory=list)
    error: str | None = None
    reason: str | None = None  # why a file was skipped: not_a_mail, unreadable, hidden, ...

    def as_dict(self) -> dict:
        return {"path": self.path, "status": self.status, "uploads": self.uploads, "error": self.error,
                "reason": self.reason}


@dataclass
class _Item:
    label: str
    load: Callable[[], bytes]


@dataclass
class _More:
    """An mbox turned out to hold ``n`` more messages than the one file counted for it."""

    n: int


# --- what is a mail ---------------------------------------------------------------

_HEAD = 1024
# Some exports open with a KiB or more of ARC/DKIM/X- headers before any of
# the fields below; while the block is still all headers, look a little further.
_HEAD_MAX = 16384
# RFC 5322 field name: printable ASCII but ":"; obsolete syntax allows blanks before the colon.
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")
_MAIL_FIELDS = frozenset({
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"received", b"return-path", b"mime-version",
    b"delivered-to", b"sender", b"reply-to",
    # A saved MIME entity (a part, a bounce's attachment) is something people replay too.
    b"content-type",
})
# A real mbox separator: "From sender date" ("From  : x" is a header with obsolete
# spacing); a letter starting "From the desk of" is caught by requiring a header
# block right after it.
_MBOX_FROM = re.compile(rb"From \S+")
_INDEX_FILES = re.compile(
    r"dovecot\.index.*|dovecot\.list\.index.*|dovecot-uidlist|dovecot-uidvalidity.*|dovecot-keywords"
    r"|maildirfolder|subscriptions|courierimap.*"
)


def _header_verdict(head: bytes, complete: bool) -> bool | None:
    """True: a header block with a mail field; False: not one; None: all headers so far, read on.

    ``complete`` says ``head`` is the whole file; otherwise its last line may be cut.
    """
    lines = head.split(b"\n")
    if not complete:
        cut = lines.pop()
        if not lines:
            return None if _FIELD.match(cut) else False
    # Some exporters leave a blank or space-filled line before the headers.
    lead = 0
    while lead < len(lines) - 1 and not lines[lead].strip():
        lead += 1
    fields = 0
    mail_field = False
    for line in lines[lead:]:
        line = line.rstrip(b"\r")
        if not line:
            return mail_field and fields > 0  # the end of the header block
        if line[:1] in (b" ", b"\t"):
            if not fields:
                return False
            continue  # folded continuation of the previous field
        m = _FIELD.match(line)
        if not m:
            return False  # "Subject: notes" then prose is a note, not a mail
        fields += 1
        mail_field = mail_field or m.group(1).lower() in _MAIL_FIELDS
    if complete:
        return mail_field  # a file of headers only
    # Well-formed headers up to where we stopped reading.
    return True if mail_field else None


def classify(path: Path) -> str:
    """``mail``, ``mbox``, or the reason the file is skipped (``empty``, ``not_a_mail``)."""
    with path.open("rb") as fh:
        want = _HEAD
        head = fh.read(want)
        if not head:
            return "empty"
        eof = len(head) < want
        kind, skip = "mail", 0
        if head.startswith(b"\xef\xbb\xbf"):
            skip = 3  # a UTF-8 BOM from a Windows editor
        elif head.startswith(b"From ") and not _FIELD.match(head):
            first, nl, _ = head.partition(b"\n")
            if not nl or not _MBOX_FROM.match(first):
                return "not_a_mail"
            kind, skip = "mbox", len(first) + 1
        while True:
            verdict = _header_verdict(head[skip:], eof)
            if verdict is not None:
                return kind if verdict else "not_a_mail"
            if eof or len(head) >= _HEAD_MAX:
                return "not_a_mail"
            want = _HEAD_MAX - len(head)
            more = fh.read(want)
            eof = len(more) < want
            head += more


def looks_like_mail(data: bytes) -> bool:
    """Whether ``data`` (the start of a file) opens with an RFC 5322 header block."""
    return bool(_header_verdict(data[:_HEAD_MAX], True))


# --- walking the paths ---------------------------------------------------------

def _is_maildir(p: Path) -> bool:
    return (p / "cur").is_dir() and (p / "new").is_dir()


def _skip_reason(name: str) -> str | None:
    if name.startswith("."):
        return "hidden"
    if _INDEX_FILES.fullmatch(name):
        return "mail_index"
    return None


def _walk(paths: Iterable[str]) -> Iterator[tuple[Path, str | None]]:
    """(path, None) for each file to look at, (path, reason) for each one skipped unread.

    Lazy: one directory listing is held at a time (sorted, so a replay is
    reproducible). Symlinked folders are not followed (loops); symlinked files are.
    """
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from _walk_dir(p)
        elif p.is_file():
            yield p, None
        elif p.exists():
            yield p, "not_a_regular_file"
        else:
            yield p, "missing"


def _listing(d: Path) -> tuple[list[os.DirEntry], str | None]:
    """A folder's entries by name, or why it cannot be read."""
    try:
        with os.scandir(d) as it:
            return sorted(it, key=lambda e: e.name), None
    except OSError as e:
        return [], f"unreadable: {e.strerror or e}"


def _walk_dir(d: Path) -> Iterator[tuple[Path, str | None]]:
    if _is_maildir(d):
        yield from _walk_maildir(d)
        return
    entries, error = _listing(d)
    if error:
        yield d, error
        return
    for e in entries:
        path = Path(e.path)
        try:
            is_dir = e.is_dir(follow_symlinks=False)
            is_file = not is_dir and e.is_file()
        except OSError:
            yield path, "unreadable"
            continue
        reason = _skip_reason(e.name)
        if is_dir:
            if reason == "hidden" and not _is_maildir(path):
                yield path, "hidden"  # one line for .git, not one per file in it
            else:
                yield from _walk_dir(path)
        elif reason:
            yield path, reason
        elif is_file:
            yield path, None
        else:
            yield path, "not_a_regular_file"


def _walk_maildir(d: Path) -> Iterator[tuple[Path, str | None]]:
    """new/ and cur/ of a Maildir; tmp/ is mail still being delivered, Dovecot's files are indexes.

    Maildir++ subfolders (``.Sent``, ``.Archive.2023``) are Maildirs themselves and are walked.
    mailbox.Maildir would list new/ and cur/ into one dict and name messages by
    key; walking them here keeps the real path for each line of output.
    """
    entries, error = _listing(d)
    if error:
        yield d, error
        return
    for e in entries:
        path = Path(e.path)
        is_dir = e.is_dir(follow_symlinks=False)
        if e.name in ("new", "cur") and is_dir:
            yield from _walk_maildir_messages(path)
        elif e.name == "tmp" and is_dir:
            yield from ((f, "maildir_tmp") for f, _ in _walk_files(path))
        elif is_dir and e.name.startswith(".") and _is_maildir(path):
            yield from _walk_maildir(path)
        elif is_dir:
            yield from _walk_dir(path)
        else:
            yield path, _skip_reason(e.name) or None


def _walk_maildir_messages(d: Path) -> Iterator[tuple[Path, str | None]]:
    for path, reason in _walk_files(d):
        yield path, reason or _skip_reason(path.name)


def _walk_files(d: Path) -> Iterator[tuple[Path, str | None]]:
    entries, error = _listing(d)
    if error:
        yield d, error
        return
    for e in entries:
        yield Path(e.path), None if e.is_file() else "not_a_regular_file"


def count(paths: Iterable[str]) -> int:
    """How many outcomes a replay of ``paths`` yields, counting each mbox as one (no file is read)."""
    return sum(1 for _ in _walk(paths))


def discover(paths: Iterable[str]) -> Iterator[_Item | ReplayOutcome | _More]:
    """Every message under ``paths``, and an outcome for each path skipped or missing. Lazy."""
    for path, reason in _walk(paths):
        if reason == "missing":
            yield ReplayOutcome(str(path), "error", error="no such file or folder")
            continue
        if reason:
            kind, _, detail = reason.partition(": ")
            yield ReplayOutcome(str(path), "skipped", reason=kind, error=detail or None)
            continue
        try:
            # A .eml file is one message by its name, even with no headers or an
            # mbox "From " line on top (mail saved by Unix tools); the content
            # test is for the files whose names say nothing.
            kind = "mail" if path.suffix.lower() == ".eml" else classify(path)
        except OSError as e:
            yield ReplayOutcome(str(path), "skipped", reason="unreadable", error=e.strerror or str(e))
            continue
        if kind == "mail":
            yield _Item(str(path), path.read_bytes)
        elif kind == "mbox":
            try:
                spans = _mbox_spans(path)
            except OSError as e:
                yield ReplayOutcome(str(path), "error", error=f"cannot read mbox: {e.strerror or e}")
                continue
            if len(spans) > 1:
                yield _More(len(spans) - 1)
            for i, (start, stop) in enumerate(spans, 1):
                yield _Item(f"{path}#{i}", lambda path=path, start=start, stop=stop: _read_mbox_message(path, start, stop))
        else:
            yield ReplayOutcome(str(path), "skipped", reason=kind)


def _mbox_spans(path: Path) -> list[tuple[int, int]]:
    """(start, stop) of each message, From_ line included, by mailbox.mbox's own rule.

    mailbox.mbox shares one file object between its reads, which is not safe
    from the several threads ingest loads messages in; the offsets are enough
    for each load to open the file itself.
    """
    spans: list[tuple[int, int]] = []
    start = None
    pos = 0
    last_empty = False
    with path.open("rb") as fh:
        for line in fh:
            if line.startswith(b"From "):
                if start is not None:
                    spans.append((start, pos - 1 if last_empty else pos))
                start = pos
                last_empty = False
            else:
                last_empty = line == b"\n"
            pos += len(line)
    if start is not None:
        spans.append((start, pos - 1 if last_empty else pos))
    return spans


def _read_mbox_message(path: Path, start: int, stop: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(start)
        fh.readline()  # the From_ line is the mbox's, not the message's
        return fh.read(max(0, stop - fh.tell()))


async def replay(
    ingestor: Ingestor,
    paths: list[str],
    *,
    queue: str | None = None,
    concurrency: int = 4,
    on_total: Callable[[int], None] | None = None,
) -> AsyncIterator[ReplayOutcome]:
    """Yield one outcome per message or skipped path, in completion order.

    ``on_total`` gets the number of outcomes to expect, first from a walk that
    reads no file, then again each time an mbox turns out to hold several
    messages (for a progress bar's total and ETA).
    """
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
            total = 0
            if on_total:
                total = await asyncio.to_thread(count, paths)
                on_total(total)
            found = discover(paths)
            # Batches: one thread hop per 64 files walked and sniffed, not one per file.
            while batch := await asyncio.to_thread(lambda: list(islice(found, 64))):
                for item in batch:
                    if isinstance(item, _More):
                        total += item.n
                        if on_total:
                            on_total(total)
                        continue
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
    await feeder  # a bug in the walk surfaces here instead of vanishing with the task


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
