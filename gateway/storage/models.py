"""The data model (SQLAlchemy 2). The same models serve SQLite and PostgreSQL.

The schema itself is owned by the Alembic migrations in ``migrations/``; a test
checks that the migrated database matches these models.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC on both backends (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.timezone.utc)
            value = value.astimezone(dt.timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value


# Stable constraint names so migrations are the same on both backends.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Base(DeclarativeBase):
    metadata = metadata
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, dt.datetime: UTCDateTime}


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)


class Queue(Base):
    __tablename__ = "queues"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    review: Mapped[bool] = mapped_column(Boolean, default=False)
    # False when the queue disappeared from the config: its rows stay readable.
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    organization: Mapped[Organization] = relationship(lazy="joined")


class Email(Base):
    __tablename__ = "emails"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # sha256 of the message without trace headers: the deduplication key.
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    message_id: Mapped[str | None] = mapped_column(Text, index=True)
    from_addr: Mapped[str | None] = mapped_column(Text)
    to: Mapped[list[str]] = mapped_column(JSON, default=list)
    cc: Mapped[list[str]] = mapped_column(JSON, default=list)
    subject: Mapped[str | None] = mapped_column(Text)
    date: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    source: Mapped[str] = mapped_column(String(16))
    envelope: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    raw_sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    defects: Mapped[list[str]] = mapped_column(JSON, default=list)
    auth_results: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The part ledger: every MIME part and its outcome (gateway.ledger).
    # Empty for mail stored before the ledger existed.
    parts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, server_default="[]")
    # Our sender verdict (gateway/sender_auth): SPF, DKIM, DMARC, ARC; None when
    # [authentication] is off. auth_results above is what the mail claimed.
    authentication: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Upload(Base):
    __tablename__ = "uploads"
    __table_args__ = (UniqueConstraint("email_id", "queue_id", name="uq_uploads_email_queue"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queues.id"), index=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    email_id: Mapped[int | None] = mapped_column(ForeignKey("emails.id"), index=True)
    name: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    queue: Mapped[Queue] = relationship(lazy="joined")
    email: Mapped[Email | None] = relationship(lazy="raise")
    documents: Mapped[list["Document"]] = relationship(
        back_populates="upload", lazy="raise", order_by="Document.id"
    )
    tasks: Mapped[list["Task"]] = relationship(
        back_populates="upload", lazy="raise", order_by="Task.id"
    )


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (Index("ix_documents_sha256", "sha256"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    upload_id: Mapped[int] = mapped_column(ForeignKey("uploads.id"), index=True)
    # body, alternative (the other rendering of the body), inline (kept with the
    # body), attachment, forwarded (an opened message/rfc822), nested (inside one)
    kind: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("documents.id"))
    filename: Mapped[str] = mapped_column(Text)
    original_filename: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(255))
    sniffed_type: Mapped[str | None] = mapped_column(String(255))
    content_id: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("documents.id"))
    # Index of the document in its mail's parse (the part ledger's "document").
    ordinal: Mapped[int | None] = mapped_column(Integer)

    upload: Mapped[Upload] = relationship(back_populates="documents", lazy="raise")


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_claim", "status", "run_after"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    upload_id: Mapped[int] = mapped_column(ForeignKey("uploads.id"), index=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id"))
    queue_id: Mapped[int] = mapped_column(ForeignKey("queues.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Not before this time (backoff); NULL means now.
    run_after: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    leased_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    upload: Mapped[Upload] = relationship(back_populates="tasks", lazy="raise")
    document: Mapped[Document] = relationship(lazy="raise")
    events: Mapped[list["TaskEvent"]] = relationship(lazy="raise", order_by="TaskEvent.id")


class TaskEvent(Base):
    """One row per state change: who, when, from, to, why."""

    __tablename__ = "task_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str | None] = mapped_column(Text)
    # First characters of the key, shown in listings; the key itself is stored hashed.
    prefix: Mapped[str] = mapped_column(String(32), index=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    organization: Mapped[Organization] = relationship(lazy="joined")


class ImapMailbox(Base):
    """What the IMAP poller has committed, per account and folder."""

    __tablename__ = "imap_mailboxes"
    __table_args__ = (UniqueConstraint("account", "folder", name="uq_imap_mailboxes_account_folder"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account: Mapped[str] = mapped_column(String(200))
    folder: Mapped[str] = mapped_column(String(500))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class KnownSender(Base):
    """A sender a queue has had verified, accepted mail from: what look-alikes
    are compared with."""

    __tablename__ = "known_senders"
    __table_args__ = (UniqueConstraint("queue_id", "domain", "display_name", name="uq_known_senders"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queues.id"), index=True)
    domain: Mapped[str] = mapped_column(String(255))  # organizational domain
    display_name: Mapped[str] = mapped_column(Text, default="")
    address: Mapped[str] = mapped_column(Text, default="")
    first_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
