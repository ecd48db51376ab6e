"""The ingest's row writes, on either backend, behind one small interface.

``Ingestor`` decides *what* rows a message makes; a ``Rows`` object only runs the
fixed statements that make them, inside a transaction its caller owns:

* ``CoreRows``   — SQLAlchemy Core on a connection (PostgreSQL through asyncpg's
  ``run_sync``, and any in-memory SQLite database);
* ``SqliteRows`` — the standard library's ``sqlite3`` on a connection owned by the
  SQLite group writer (``SqliteWriter``).

Why two: on SQLite the write runs while the single write lock is held, and under
16 SMTP sessions SQLAlchemy's per-statement execution machinery (parameter
processing, result set-up, savepoint bookkeeping) was the largest share of the
gateway's CPU per 2 KB message, about ten times what sqlite3 itself spends. The
statements here store exactly what SQLAlchemy's types would (JSON text, naive
UTC datetimes in SQLAlchemy's SQLite format), and the test suite reads every row
back through the models on both backends.

Every insert here passes its text through ``storage.text.storable`` (NUL and
lone surrogates → U+FFFD): this is the one place every ingest's rows are
written (mail through ``commit``, and the HTTP upload's own upload row), so a
name or header PostgreSQL cannot hold is caught here rather than by each caller.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from dataclasses import dataclass
from typing import Callable, Protocol

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from gateway.errors import DatabaseUnavailable
from gateway.storage import models as m
from gateway.storage.db import sqlite_pragmas
from gateway.storage.text import storable, storable_row


@dataclass(frozen=True)
class QueueRow:
    id: int
    name: str
    organization_id: int


class Rows(Protocol):
    def queue(self, name: str) -> QueueRow | None: ...
    def email_id(self, fingerprint: str) -> int | None: ...
    def insert_email(self, row: dict) -> int: ...
    def upload_id(self, email_id: int, queue_id: int) -> int | None: ...
    def task_ids(self, upload_id: int) -> list[int]: ...
    def seen(self, queue_id: int, hashes: list[str]) -> dict[str, int]: ...
    def insert_upload(self, row: dict) -> int: ...
    def insert_documents(self, rows: list[dict]) -> list[int]: ...
    def insert_tasks(self, rows: list[dict]) -> list[int]: ...
    def insert_task_events(self, rows: list[dict]) -> None: ...
    def add_recipients(self, email_id: int, addresses: list[str]) -> None: ...
    def learn_sender(self, queue_id: int, domain: str, display_name: str, address: str) -> None: ...


def merged_recipients(envelope: dict | None, addresses: list[str]) -> dict | None:
    """``envelope`` with ``addresses`` added to its ``rcpt_to`` (case-insensitively
    new ones, in order), or None when it has them all already."""
    envelope = dict(envelope or {})
    rcpt = list(envelope.get("rcpt_to") or [])
    known = {a.lower() for a in rcpt}
    added = [a for a in dict.fromkeys(addresses) if a.lower() not in known]
    if not added:
        return None
    envelope["rcpt_to"] = rcpt + added
    return envelope


# --- SQLAlchemy Core ------------------------------------------------------------------

_emails, _uploads, _documents = m.Email.__table__, m.Upload.__table__, m.Document.__table__
_tasks, _task_events, _queues = m.Task.__table__, m.TaskEvent.__table__, m.Queue.__table__
_known = m.KnownSender.__table__
_SELECT_QUEUE = select(_queues.c.id, _queues.c.name, _queues.c.organization_id).where(
    _queues.c.name == bindparam("name")
)
_SELECT_EMAIL = select(_emails.c.id).where(_emails.c.fingerprint == bindparam("fingerprint"))
_SELECT_UPLOAD = select(_uploads.c.id).where(
    _uploads.c.email_id == bindparam("email_id"), _uploads.c.queue_id == bindparam("queue_id")
)
_SELECT_TASK_IDS = select(_tasks.c.id).where(_tasks.c.upload_id == bindparam("upload_id")).order_by(_tasks.c.id)
_SELECT_SEEN = (
    select(_documents.c.sha256, func.min(_documents.c.id))
    .join(_uploads, _uploads.c.id == _documents.c.upload_id)
    .where(_uploads.c.queue_id == bindparam("queue_id"), _documents.c.sha256.in_(bindparam("hashes", expanding=True)))
    .group_by(_documents.c.sha256)
)
_INSERT_EMAIL = insert(_emails).returning(_emails.c.id)
_INSERT_UPLOAD = insert(_uploads).returning(_uploads.c.id)
_INSERT_DOCUMENT = insert(_documents).returning(_documents.c.id)
# executemany: ids come back in the order of the parameter sets.
_INSERT_DOCUMENTS = insert(_documents).returning(_documents.c.id, sort_by_parameter_order=True)
_INSERT_TASKS = insert(_tasks).returning(_tasks.c.id, sort_by_parameter_order=True)
_INSERT_TASK_EVENTS = insert(_task_events)
# Locked: two deliveries of one message to different queues may add at once.
_SELECT_ENVELOPE = select(_emails.c.envelope).where(_emails.c.id == bindparam("email_id")).with_for_update()
_UPDATE_ENVELOPE = (
    update(_emails).where(_emails.c.id == bindparam("email_id")).values(envelope=bindparam("new_envelope"))
)


class CoreRows:
    """Fixed Core statements (compiled once, cached) on a SQLAlchemy connection."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def queue(self, name: str) -> QueueRow | None:
        r = self.conn.execute(_SELECT_QUEUE, {"name": name}).first()
        return QueueRow(*r) if r else None

    def email_id(self, fingerprint: str) -> int | None:
        return self.conn.execute(_SELECT_EMAIL, {"fingerprint": fingerprint}).scalar_one_or_none()

    def insert_email(self, row: dict) -> int:
        return self.conn.execute(_INSERT_EMAIL, storable_row(row)).scalar_one()

    def upload_id(self, email_id: int, queue_id: int) -> int | None:
        return self.conn.execute(_SELECT_UPLOAD, {"email_id": email_id, "queue_id": queue_id}).scalar_one_or_none()

    def task_ids(self, upload_id: int) -> list[int]:
        return list(self.conn.execute(_SELECT_TASK_IDS, {"upload_id": upload_id}).scalars().all())

    def seen(self, queue_id: int, hashes: list[str]) -> dict[str, int]:
        return dict(self.conn.execute(_SELECT_SEEN, {"queue_id": queue_id, "hashes": hashes}).all())

    def insert_upload(self, row: dict) -> int:
        return self.conn.execute(_INSERT_UPLOAD, storable_row(row)).scalar_one()

    def insert_documents(self, rows: list[dict]) -> list[int]:
        rows = [storable_row(r) for r in rows]
        if len(rows) == 1:
            return [self.conn.execute(_INSERT_DOCUMENT, rows[0]).scalar_one()]
        return list(self.conn.execute(_INSERT_DOCUMENTS, rows).scalars().all())

    def insert_tasks(self, rows: list[dict]) -> list[int]:
        return list(self.conn.execute(_INSERT_TASKS, rows).scalars().all())

    def insert_task_events(self, rows: list[dict]) -> None:
        self.conn.execute(_INSERT_TASK_EVENTS, [storable_row(r) for r in rows])

    def learn_sender(self, queue_id: int, domain: str, display_name: str, address: str) -> None:
        row = storable({"queue_id": queue_id, "domain": domain, "display_name": display_name, "address": address})
        if self.conn.dialect.name == "postgresql":
            stmt = pg_insert(_known).values(**row, first_seen=m.utcnow()).on_conflict_do_nothing()
        else:
            stmt = insert(_known).values(**row, first_seen=m.utcnow()).prefix_with("OR IGNORE")
        self.conn.execute(stmt)

    def add_recipients(self, email_id: int, addresses: list[str]) -> None:
        envelope = self.conn.execute(_SELECT_ENVELOPE, {"email_id": email_id}).scalar_one()
        merged = merged_recipients(envelope, addresses)
        if merged is not None:
            self.conn.execute(_UPDATE_ENVELOPE, {"email_id": email_id, "new_envelope": storable(merged)})


# --- sqlite3 --------------------------------------------------------------------------


def _ts(value: dt.datetime | None) -> str | None:
    """What ``UTCDateTime`` + SQLAlchemy's SQLite DATETIME store: naive UTC text."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    # SQLAlchemy's format: "%04d-%02d-%02d %02d:%02d:%02d.%06d" (isoformat pads the
    # year the same way, where strftime's %Y does not).
    return value.isoformat(" ", "microseconds")


def _js(value) -> str:
    return json.dumps(value)


def _now() -> str:
    return _ts(m.utcnow())


def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    cols = ", ".join(f'"{c}"' for c in columns)
    return f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(columns))}) RETURNING id"


_EMAIL_COLS = (
    "fingerprint", "message_id", "from_addr", "to", "cc", "subject", "date", "received_at",
    "source", "envelope", "raw_sha256", "size", "defects", "auth_results", "parts", "authentication",
)
_UPLOAD_COLS = ("queue_id", "organization_id", "email_id", "name", "metadata", "created_at")
_DOCUMENT_COLS = (
    "upload_id", "kind", "parent_id", "filename", "original_filename", "content_type",
    "sniffed_type", "content_id", "size", "sha256", "duplicate_of", "ordinal",
)
_TASK_COLS = ("upload_id", "document_id", "queue_id", "status", "attempts", "created_at", "updated_at")
_EVENT_COLS = ("task_id", "from_status", "to_status", "at", "actor", "reason")

_SQL_EMAIL = _insert_sql("emails", _EMAIL_COLS)
_SQL_UPLOAD = _insert_sql("uploads", _UPLOAD_COLS)
_SQL_DOCUMENT = _insert_sql("documents", _DOCUMENT_COLS)
_SQL_TASK = _insert_sql("tasks", _TASK_COLS)
_SQL_EVENT = _insert_sql("task_events", _EVENT_COLS).removesuffix(" RETURNING id")


class SqliteRows:
    """The same writes with ``sqlite3``, on the group writer's connection."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con
        self._now: str | None = None

    def now(self) -> str:
        """One timestamp for the rows of a group: they commit together."""
        if self._now is None:
            self._now = _now()
        return self._now

    def _one(self, sql: str, params) -> int | None:
        r = self.con.execute(sql, params).fetchone()
        return r[0] if r else None

    def queue(self, name: str) -> QueueRow | None:
        r = self.con.execute("SELECT id, name, organization_id FROM queues WHERE name = ?", (name,)).fetchone()
        return QueueRow(*r) if r else None

    def email_id(self, fingerprint: str) -> int | None:
        return self._one("SELECT id FROM emails WHERE fingerprint = ?", (fingerprint,))

    def insert_email(self, row: dict) -> int:
        row = storable_row(row)
        return self._one(
            _SQL_EMAIL,
            (
                row["fingerprint"], row["message_id"], row["from_addr"], _js(row["to"]), _js(row["cc"]),
                row["subject"], _ts(row["date"]), self.now(), row["source"], _js(row["envelope"]),
                row["raw_sha256"], row["size"], _js(row["defects"]), _js(row["auth_results"]),
                _js(row.get("parts", [])), _js(row.get("authentication")),
            ),
        )

    def upload_id(self, email_id: int, queue_id: int) -> int | None:
        return self._one("SELECT id FROM uploads WHERE email_id = ? AND queue_id = ?", (email_id, queue_id))

    def task_ids(self, upload_id: int) -> list[int]:
        return [r[0] for r in self.con.execute("SELECT id FROM tasks WHERE upload_id = ? ORDER BY id", (upload_id,))]

    def seen(self, queue_id: int, hashes: list[str]) -> dict[str, int]:
        if not hashes:
            return {}
        sql = (
            "SELECT documents.sha256, min(documents.id) FROM documents"
            " JOIN uploads ON uploads.id = documents.upload_id"
            f" WHERE uploads.queue_id = ? AND documents.sha256 IN ({', '.join('?' * len(hashes))})"
            " GROUP BY documents.sha256"
        )
        return dict(self.con.execute(sql, (queue_id, *hashes)).fetchall())

    def insert_upload(self, row: dict) -> int:
        row = storable_row(row)
        return self._one(
            _SQL_UPLOAD,
            (row["queue_id"], row["organization_id"], row["email_id"], row["name"], _js(row["metadata"]), self.now()),
        )

    def insert_documents(self, rows: list[dict]) -> list[int]:
        # One statement per row: RETURNING does not work with executemany.
        return [self._one(_SQL_DOCUMENT, tuple(storable(r.get(c)) for c in _DOCUMENT_COLS)) for r in rows]

    def insert_tasks(self, rows: list[dict]) -> list[int]:
        now = self.now()
        return [
            self._one(_SQL_TASK, (r["upload_id"], r["document_id"], r["queue_id"], r["status"], 0, now, now))
            for r in rows
        ]

    def insert_task_events(self, rows: list[dict]) -> None:
        now = self.now()
        self.con.executemany(
            _SQL_EVENT,
            [(r["task_id"], r["from_status"], r["to_status"], now, r["actor"], storable(r["reason"])) for r in rows],
        )

    def learn_sender(self, queue_id: int, domain: str, display_name: str, address: str) -> None:
        row = storable((domain, display_name, address))
        self.con.execute(
            "INSERT OR IGNORE INTO known_senders (queue_id, domain, display_name, address, first_seen)"
            " VALUES (?, ?, ?, ?, ?)",
            (queue_id, *row, self.now()),
        )

    def add_recipients(self, email_id: int, addresses: list[str]) -> None:
        (envelope,) = self.con.execute("SELECT envelope FROM emails WHERE id = ?", (email_id,)).fetchone()
        merged = merged_recipients(json.loads(envelope) if envelope else None, addresses)
        if merged is not None:
            self.con.execute("UPDATE emails SET envelope = ? WHERE id = ?", (_js(storable(merged)), email_id))


def _database_error(e: sqlite3.Error) -> BaseException:
    """sqlite3's errors in the shape the rest of the gateway already handles."""
    if isinstance(e, sqlite3.IntegrityError):
        return IntegrityError(None, None, e)
    err = DatabaseUnavailable(f"database unavailable: {str(e).strip() or type(e).__name__}")
    err.__cause__ = e
    return err


class SqliteWriter:
    """Group commit on one ``sqlite3`` connection (see ``storage.group_commit``).

    ``run_group(fns)`` runs each ``fn(rows)`` inside its own SAVEPOINT of one
    ``BEGIN IMMEDIATE`` transaction, then commits once; it returns ``(ok, value
    or exception)`` per function. A failing function undoes its own rows only; a
    failing commit raises and nothing of the group is stored. Calls are
    serialized by the caller (one group at a time); the lock is a guard.
    ``before`` runs first, before BEGIN (the blob store's flush: every blob the
    group's rows name is durable before they are, and the write lock is not held
    while it syncs).
    """

    def __init__(self, path: str, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous
        self._con: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        for pragma in sqlite_pragmas(self.synchronous):
            con.execute(pragma)
        return con

    def run_group(
        self, fns: list[Callable[[Rows], object]], before: Callable[[], None] | None = None
    ) -> list[tuple[bool, object]]:
        with self._lock:
            if before is not None:
                before()
            try:
                return self._run_group(fns)
            except sqlite3.Error as e:
                self.close()  # start the next group on a fresh connection
                raise _database_error(e) from e

    def _run_group(self, fns) -> list[tuple[bool, object]]:
        if self._con is None:
            self._con = self._connect()
        con = self._con
        rows = SqliteRows(con)
        out: list[tuple[bool, object]] = []
        con.execute("BEGIN IMMEDIATE")
        try:
            for fn in fns:
                con.execute("SAVEPOINT one")
                try:
                    value = fn(rows)
                except Exception as e:
                    con.execute("ROLLBACK TO one")
                    con.execute("RELEASE one")
                    out.append((False, _database_error(e) if isinstance(e, sqlite3.Error) else e))
                    continue
                con.execute("RELEASE one")
                out.append((True, value))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                try:
                    con.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        return out

    def close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            try:
                con.close()
            except sqlite3.Error:
                pass
