"""Logging and metrics set-up, in one place.

Log events are dotted names from a closed catalogue (``ingest.created``,
``smtp.rejected``, ``task.failed`` ...) and carry ids from a fixed list of keys
(``email_id``, ``upload_id``, ``task_id``, ``queue``, ``peer``), so logs can be
grepped and asserted on with ``structlog.testing.capture_logs()``.
"""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# Keys whose values are never written to a log line, whatever the caller passed.
SECRET_KEYS = frozenset({"password", "secret", "token", "api_key", "key", "authorization"})


def _redact(_logger, _name, event_dict):
    for k in list(event_dict):
        if k.lower() in SECRET_KEYS:
            event_dict[k] = "***"
    return event_dict


def configure_logging(fmt: str = "auto", level: str = "info", stream=None) -> None:
    """``fmt``: "console" (or "text") human-readable, "json" one object per line,
    "auto" the first on a terminal and the second otherwise (a pipe, the journal)."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    if fmt == "auto":
        fmt = "console" if tty else "json"
    renderer = (
        # Colour codes only where a terminal interprets them, not in a file
        # someone forced text logs into.
        structlog.dev.ConsoleRenderer(colors=tty)
        if fmt in ("console", "text")
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**bind):
    # A lazy proxy: binding at import time would freeze the default (stdout)
    # configuration before configure_logging() runs.
    return structlog.get_logger("gateway", **bind)


# --- metrics (Prometheus); names are part of the /metrics contract ---------------

MESSAGES_RECEIVED = Counter(
    "gateway_messages_received_total",
    "Messages handed to ingest, by ingress and outcome",
    ["source", "outcome"],
)
UPLOADS_CREATED = Counter("gateway_uploads_created_total", "Uploads created", ["queue"])
INGEST_SECONDS = Histogram(
    "gateway_ingest_seconds", "Time from raw bytes to committed rows", ["source"]
)
SMTP_SESSIONS = Gauge("gateway_smtp_sessions", "Open SMTP sessions")
SMTP_BUFFERED_BYTES = Gauge(
    "gateway_smtp_buffered_bytes", "Message bytes SMTP sessions hold in memory (received or being stored)"
)
SMTP_REPLIES = Counter("gateway_smtp_replies_total", "SMTP replies by code class", ["code"])


class TransitionCounts(Collector):
    """``gateway_task_transitions_total{from_status, to_status}``, read from the
    task_events table at scrape time (``/metrics`` calls ``update``): a process
    counter would miss the CLI's transitions and another instance's. The number
    is the whole database's, so instances sharing one report the same value: take
    max(), not sum(), across them. Until a scrape has read the database it is empty."""

    name = "gateway_task_transitions"
    documentation = "Task state changes recorded in the database (task creation excluded)"

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    def update(self, rows) -> None:
        self._counts = {(str(f), str(t)): int(n) for f, t, n in rows}

    def describe(self):
        return [CounterMetricFamily(self.name, self.documentation, labels=["from_status", "to_status"])]

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation, labels=["from_status", "to_status"])
        for (from_status, to_status), n in sorted(self._counts.items()):
            family.add_metric([from_status, to_status], n)
        yield family


TASK_TRANSITIONS = TransitionCounts()
REGISTRY.register(TASK_TRANSITIONS)
PROCESSOR_SECONDS = Histogram(
    "gateway_processor_seconds", "Processor run time", ["type", "outcome"]
)
