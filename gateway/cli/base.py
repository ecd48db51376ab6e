"""What every command shares: error reporting and exit status, the asyncio
runner, the context that reads the config, the --json option."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from functools import wraps
from typing import Any

import click

from gateway.config import load_settings
from gateway.errors import ConfigError, GatewayError, StorageUnavailable, TemporaryError
from gateway.observability import configure_logging, get_logger

log = get_logger()

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TEMPFAIL = 75  # sysexits' EX_TEMPFAIL, as the command processor uses it


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


class CliError(click.ClickException):
    """An error as the user sees it: ``error: ...`` or, under --json, ``{"detail", "code"}``."""

    def __init__(self, detail: str, code: str, exit_code: int, as_json: bool) -> None:
        super().__init__(detail)
        self.code = code
        self.exit_code = exit_code
        self.as_json = as_json

    def show(self, file=None) -> None:
        if self.as_json:
            click.echo(_dump({"detail": self.message, "code": self.code}), err=True)
        else:
            click.echo(f"error: {self.message}", err=True)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _as_cli_error(e: Exception, as_json: bool) -> CliError:
    from gateway.storage.db import as_database_error

    if isinstance(e, ConfigError):
        return CliError(str(e), "config_error", EXIT_USAGE, as_json)
    err = as_database_error(e)
    if err is not e or isinstance(e, (ConnectionError, socket.gaierror, TimeoutError)):
        # A refused connection or an unknown host: the database is the only
        # server these commands reach (`check` reports its own).
        detail = str(err) if err is not e else f"database unavailable: {_one_line(e)}"
        return CliError(detail, "database_unavailable", EXIT_TEMPFAIL, as_json)
    if isinstance(e, StorageUnavailable):
        return CliError(str(e), "storage_unavailable", EXIT_TEMPFAIL, as_json)
    if isinstance(e, TemporaryError):
        return CliError(str(e), "database_unavailable", EXIT_TEMPFAIL, as_json)
    if isinstance(e, GatewayError):
        return CliError(str(e), e.code, EXIT_FAILED, as_json)
    return CliError(f"{type(e).__name__}: {_one_line(e)}", "error", EXIT_FAILED, as_json)


@contextlib.contextmanager
def cli_errors(as_json: bool):
    """Turn what a command body raises into a CliError (message, code, exit status)."""
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except Exception as e:
        # The traceback helps only when something unexpected broke; keep it
        # for `[logging] level = "debug"` instead of every error message.
        log.debug("cli.failed", exc_info=True)
        raise _as_cli_error(e, as_json) from e


def run_async(fn):
    """Run an async command body; map its errors to a message and exit status."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        with cli_errors(kwargs.get("as_json", False)):
            return asyncio.run(fn(*args, **kwargs))

    return wrapper


def _wants_json(args: list[str]) -> bool:
    return "--json" in (args[: args.index("--")] if "--" in args else args)


class GatewayGroup(click.Group):
    """The top group: under --json, click's own usage errors are JSON objects too."""

    def make_context(self, info_name, args, parent=None, **extra):
        self._json = _wants_json(list(args))
        with self._usage_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx):
        with self._usage_errors():
            return super().invoke(ctx)

    @contextlib.contextmanager
    def _usage_errors(self):
        try:
            yield
        except CliError:
            raise
        except click.ClickException as e:
            if not getattr(self, "_json", False):
                raise
            code = "usage_error" if isinstance(e, click.UsageError) else "error"
            raise CliError(e.format_message(), code, e.exit_code, True) from e


LOG_FORMATS = {"auto": "auto", "text": "console", "json": "json"}


class Ctx:
    def __init__(self, config: str | None, log_format: str | None = None) -> None:
        self.config_path = config
        self.log_format = LOG_FORMATS[log_format] if log_format else None
        self._settings = None

    @property
    def settings(self):
        if self._settings is None:
            settings = load_settings(self.config_path)  # ConfigError: the command's wrapper reports it
            if self.log_format:
                # Commands that reconfigure logging (replay) read it from the settings.
                logging_ = settings.logging.model_copy(update={"format": self.log_format})
                settings = settings.model_copy(update={"logging": logging_})
            configure_logging(settings.logging.format, settings.logging.level)
            self._settings = settings
        return self._settings


pass_ctx = click.make_pass_decorator(Ctx)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON only (errors too, on stderr).")



def _urls(settings):
    from gateway.services import Urls

    return Urls(settings.http.base_url)
