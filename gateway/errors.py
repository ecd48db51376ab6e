"""One exception tree for the whole gateway.

Each ingress maps these to its own language: an SMTP reply, an HTTP
``{"detail", "code"}`` body, a CLI message and exit status. Callers catch by level:
``TemporaryError`` means "try again later" (SMTP 451), ``PermanentError`` means
"this input will never work" (SMTP 5xx).
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    code = "error"


class ConfigError(GatewayError):
    """The configuration file is missing, unreadable or invalid."""

    code = "bad_request"


class TemporaryError(GatewayError):
    """A failure the sender should retry (storage or database unavailable)."""

    code = "error"


class StorageUnavailable(TemporaryError):
    """Blob storage could not be written or read."""


class DatabaseUnavailable(TemporaryError):
    """The database could not be reached or the transaction failed."""


class PermanentError(GatewayError):
    """Input that will never be accepted as it is."""

    code = "bad_request"


class NoRoute(PermanentError):
    """A recipient (or the whole message) routes to no queue."""


class MessageTooLarge(PermanentError):
    code = "payload_too_large"


class NotFound(GatewayError):
    code = "not_found"


class ConflictStatus(GatewayError):
    """A task is not in a state that allows the requested transition."""

    code = "conflict_status"


class IllegalTransition(ConflictStatus):
    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"a task in state {current!r} cannot move to {target!r}")
        self.current = current
        self.target = target
