"""The `gateway` command: parse arguments, call services, print (or --json).

Exit status: 0 success; 1 the command ran but something it did failed (a message
rejected, a task in the wrong state, not found); 2 bad usage or configuration;
75 the database or blob storage is unavailable (temporary: try again later).
Under ``--json`` an error is one ``{"detail", "code"}`` object on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
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


@click.group(cls=GatewayGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    envvar="GATEWAY_CONFIG",
    default=None,
    help="Config file (default: $GATEWAY_CONFIG, then ./config.toml).",
)
@click.option(
    "--log-format",
    type=click.Choice(list(LOG_FORMATS)),
    envvar="GATEWAY_LOG_FORMAT",
    default=None,
    help="Log lines (on stderr): text, json, or auto (text on a terminal, JSON otherwise). "
    "Default: $GATEWAY_LOG_FORMAT, then [logging] format of the config.",
)
@click.pass_context
def main(click_ctx: click.Context, config: str | None, log_format: str | None) -> None:
    """Email-ingestion gateway."""
    click_ctx.obj = Ctx(config, log_format)
    # Until the config is read: stderr, never stdout (stdout carries --json output).
    configure_logging(click_ctx.obj.log_format or "auto", "info")


# --- serve ----------------------------------------------------------------------------


@main.command()
@pass_ctx
def serve(ctx: Ctx) -> None:
    """Run what the config enables (SMTP, IMAP, workers, HTTP API) until SIGTERM."""
    from gateway.daemon import run_daemon

    with cli_errors(False):
        settings = ctx.settings
    sys.exit(run_daemon(settings))


# --- check ----------------------------------------------------------------------------


@main.command()
@json_option
@pass_ctx
@run_async
async def check(ctx: Ctx, as_json: bool) -> None:
    """Validate the config and try every connection it names."""
    from gateway.checks import run_checks

    results = await run_checks(ctx.settings)
    for r in results:
        if as_json:
            click.echo(_dump(r.as_dict()))
        else:
            click.echo(f"{'ok  ' if r.ok else 'FAIL'}  {r.name}: {r.detail}")
    failed = [r for r in results if not r.ok]
    if failed:
        if not as_json:
            click.echo(f"{len(failed)} problem(s)", err=True)
        sys.exit(1)


# --- db -------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option(
    "--revision", default="heads", show_default=True, help="Alembic revision to upgrade to (heads: the latest of all)."
)
@json_option
@pass_ctx
@run_async
async def db_upgrade(ctx: Ctx, revision: str, as_json: bool) -> None:
    """Apply database migrations (Alembic) and print the revision reached."""
    from sqlalchemy.engine import make_url

    from gateway.storage import db as dbm

    url = ctx.settings.storage.database_url
    engine = dbm.create_engine(url)
    try:
        await dbm.upgrade(engine, revision)
        current, head = await dbm.migration_state(engine)
    finally:
        await engine.dispose()
    if as_json:
        click.echo(
            _dump(
                {
                    "revisions": sorted(current),
                    "heads": sorted(head),
                    "database": make_url(url).render_as_string(hide_password=True),
                }
            )
        )
        return
    click.echo(f"database at revision {', '.join(sorted(current))} (code: {', '.join(sorted(head))})")


# --- replay ---------------------------------------------------------------------------


# Text mode lists at most this many skipped files; --json lists every one.
_SKIPPED_SHOWN = 100


def _replay_progress():
    """A bar with count/total, messages per second and time left (on stderr, gone when done)."""
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn,
    )
    from rich.console import Console
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?/s" if speed is None else f"{speed:,.1f}/s", style="progress.data.speed")

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
        TextColumn("eta"), TimeRemainingColumn(),
        # stderr: stdout carries the lines (often piped to a file while the bar shows).
        console=Console(stderr=True),
        transient=True,
    )


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--queue", help="Ingest into this queue instead of routing by address.")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64))
@json_option
@pass_ctx
@run_async
async def replay(ctx: Ctx, paths: tuple[str, ...], queue: str | None, concurrency: int, as_json: bool) -> None:
    """Ingest mail files, Maildirs, mbox files and folders of them (recursive).

    A file is a mail by its content (a header block), whatever its name; other
    files are listed as skipped with a reason.
    """
    from gateway.ingress.replay import replay as do_replay
    from gateway.runtime import open_runtime

    settings = ctx.settings
    if queue and settings.queue(queue) is None:
        raise ConfigError(f"unknown queue {queue!r}; the config has: {', '.join(q.name for q in settings.queues)}")
    counts = {"created": 0, "duplicate": 0, "rejected": 0, "error": 0}
    skipped = 0
    skipped_shown: list[str] = []
    progress = None
    on_total = None
    if not as_json and sys.stderr.isatty():
        # The line per message already says what happened; info logs would
        # tear the progress bar apart on a terminal.
        if settings.logging.level in ("debug", "info"):
            configure_logging(settings.logging.format, "warning")
        progress = _replay_progress()
        bar = progress.add_task("replaying", total=None)

        def on_total(n: int) -> None:
            progress.update(bar, total=n)

        progress.start()
    try:
        async with open_runtime(settings) as rt:
            outcomes = do_replay(rt.ingestor, list(paths), queue=queue, concurrency=concurrency, on_total=on_total)
            async for outcome in outcomes:
                if progress:
                    progress.advance(bar)
                if outcome.status == "skipped":
                    skipped += 1
                    if as_json:
                        click.echo(_dump(outcome.as_dict()))
                    elif len(skipped_shown) < _SKIPPED_SHOWN:
                        detail = f" ({outcome.error})" if outcome.error else ""
                        skipped_shown.append(f"{'skipped':9} {outcome.path}  {outcome.reason}{detail}")
                    continue
                counts[outcome.status] += 1
                if as_json:
                    click.echo(_dump(outcome.as_dict()))
                else:
                    ups = ", ".join(f"upload {u['id']} ({u['queue']}, {len(u['tasks'])} tasks)" for u in outcome.uploads)
                    line = f"{outcome.status:9} {outcome.path}"
                    if ups:
                        line += f"  {ups}"
                    if outcome.error:
                        line += f"  {outcome.error}"
                    click.echo(line)
    finally:
        if progress:
            progress.stop()
    # Skipped files come after the messages, next to the summary that counts them,
    # rather than scattered among a long run's lines.
    for line in skipped_shown:
        click.echo(line)
    if not as_json and skipped > len(skipped_shown):
        click.echo(f"... and {skipped - len(skipped_shown)} more skipped (--json lists every one)")
    total = sum(counts.values())
    summary = f"{total} messages: " + ", ".join(f"{v} {k}" for k, v in counts.items())
    if skipped:
        summary += f"; {skipped} files skipped"
    click.echo(summary, err=as_json)
    if not total:
        raise CliError(f"no mail found under {', '.join(paths)}", "no_mail", EXIT_FAILED, as_json)
    if counts["rejected"] or counts["error"]:
        sys.exit(1)


# --- uploads / tasks ------------------------------------------------------------------


def _urls(settings):
    from gateway.services import Urls

    return Urls(settings.http.base_url)


@main.group()
def uploads() -> None:
    """Look at uploads and move them between queues."""


UPLOAD_STATUSES = ["processing", "reviewing", "completed", "failed", "partial"]


@uploads.command("list")
@click.option("--queue", metavar="NAME", help="Only the uploads of this queue.")
@click.option(
    "--status",
    type=click.Choice(UPLOAD_STATUSES),
    help="Only uploads in this status (derived from their tasks: partial = some failed, none pending).",
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000), help="At most this many.")
@click.option("--before", "cursor", type=int, metavar="ID", help="Only uploads with an id below this (paging).")
@json_option
@pass_ctx
@run_async
async def uploads_list(ctx: Ctx, queue, status, limit, cursor, as_json) -> None:
    """List uploads, newest first: id, status, queue, creation time, name.

    With --json, one object per line (the HTTP API's representation).
    """
    from gateway import services as sv
    from gateway.runtime import open_runtime

    async with open_runtime(ctx.settings) as rt:
        async with rt.sessions() as s:
            queue_id = (await sv.queue_by_name(s, queue)).id if queue else None
            page = await sv.list_uploads(s, queue_id=queue_id, status=status, cursor=cursor, page_size=limit)
            statuses = await sv.statuses_of(s, [u.id for u in page.items])
    urls = _urls(ctx.settings)
    for u in page.items:
        d = sv.upload_dict(u, urls, statuses[u.id])
        if as_json:
            click.echo(_dump(d))
        else:
            click.echo(f"{u.id:>7}  {d['status']:10} {u.queue.name:15} {d['created_at']}  {u.name}")


@uploads.command("show")
@click.argument("upload_id", type=int)
@json_option
@pass_ctx
@run_async
async def uploads_show(ctx: Ctx, upload_id: int, as_json: bool) -> None:
    """Show one upload: its metadata, email, documents and their tasks.

    Each document with its id, kind, filename, content type, size, sha256 and the
    document it duplicates; each task with its id, status, attempts and last error.
    """
    from gateway import services as sv
    from gateway.runtime import open_runtime

    async with open_runtime(ctx.settings) as rt:
        async with rt.sessions() as s:
            u = await sv.get_upload(s, upload_id)
            email, docs, tasks = await sv.upload_details(s, u)
            status = (await sv.statuses_of(s, [u.id]))[u.id]
    d = sv.upload_dict(u, _urls(ctx.settings), status, email=email, documents=docs, tasks=tasks)
    if email is not None:
        d["email"] = d.pop("email_detail")
    if as_json:
        click.echo(_dump(d))
        return
    for line in _upload_lines(u, status.value, d, email, docs, tasks):
        click.echo(line)


def _upload_lines(u, status: str, d: dict, email, docs, tasks) -> list[str]:
    lines = [
        f"upload {u.id}: {u.name}",
        f"  queue     {u.queue.name}",
        f"  status    {status}",
        f"  created   {d['created_at']}",
        f"  metadata  {_dump(u.meta) if u.meta else '-'}",
    ]
    if email is not None:
        lines.append(f"  email     {email.id} from {email.from_addr} ({email.source}, {email.size} bytes)")
        if email.defects:
            lines.append(f"  defects   {'; '.join(email.defects[:5])}")
    tasks_by_doc: dict[int | None, list] = {}
    for t in tasks:
        tasks_by_doc.setdefault(t.document_id, []).append(t)

    def task_line(t) -> str:
        err = f", last error: {t.last_error}" if t.last_error else ""
        return f"      task {t.id}: {t.status}, {t.attempts} attempt(s){err}"

    for doc in docs:
        lines.append(f"  document {doc.id}: {doc.kind} {doc.filename!r} [{doc.content_type}, {doc.size} B]")
        lines.append(f"      sha256 {doc.sha256}")
        if doc.duplicate_of:
            lines.append(f"      duplicate of document {doc.duplicate_of}")
        lines.extend(task_line(t) for t in tasks_by_doc.pop(doc.id, []))
    for t in (t for rest in tasks_by_doc.values() for t in rest):  # a task whose document is not this upload's
        lines.append(task_line(t).replace("      ", "  ", 1) + f" (document {t.document_id})")
    return lines


@uploads.command("move")
@click.argument("upload_id", type=int)
@click.option("--queue", "queue_name", required=True, metavar="NAME", help="The target queue (same organization).")
@json_option
@pass_ctx
@run_async
async def uploads_move(ctx: Ctx, upload_id: int, queue_name: str, as_json: bool) -> None:
    """Move an upload and its tasks to another queue of the same organization.

    As the API's PUT /uploads/{id}/move: tasks keep their state; queued ones are
    then run by the new queue's processors.
    """
    from gateway import services as sv
    from gateway.runtime import open_runtime
    from gateway.storage.db import transaction

    async with open_runtime(ctx.settings) as rt:
        async with transaction(rt.sessions) as s:
            u = await sv.move_upload_to(s, upload_id, queue_name)
            await s.flush()
            status = (await sv.statuses_of(s, [u.id]))[u.id]
            d = sv.upload_dict(u, _urls(ctx.settings), status)
    log.info("cli.upload_moved", upload_id=upload_id, queue=queue_name)
    if as_json:
        click.echo(_dump(d))
    else:
        click.echo(f"upload {upload_id} moved to queue {queue_name} ({status.value})")


@main.group()
def emails() -> None:
    """Look at received emails and their part ledgers."""


@emails.command("show")
@click.argument("email_id", type=int)
@json_option
@pass_ctx
@run_async
async def emails_show(ctx: Ctx, email_id: int, as_json: bool) -> None:
    """Show one email: its headers, uploads, and the part ledger (every MIME
    part with its outcome: body, inline, alternative, document, container, or
    skipped with a reason)."""
    from gateway import services as sv
    from gateway.runtime import open_runtime

    async with open_runtime(ctx.settings) as rt:
        async with rt.sessions() as s:
            d = await sv.email_detail(s, email_id, None, _urls(ctx.settings))
    if as_json:
        click.echo(_dump(d))
        return
    click.echo(f"email {d['id']}: {d['subject'] or '(no subject)'}")
    click.echo(f"  from      {d['from'] or '-'}")
    click.echo(f"  received  {d['received_at']} ({d['source']}, {d['size']} bytes)")
    click.echo(f"  uploads   {', '.join(u.rsplit('/', 1)[-1] for u in d['uploads']) or '-'}")
    for defect in d["defects"][:5]:
        click.echo(f"  defect    {defect}")
    click.echo("  parts:")
    if not d["parts"]:
        click.echo("    (no ledger: stored before the part ledger existed)")
    for p in d["parts"]:
        outcome = f"{p['outcome']} ({p['reason']})" if p["reason"] else p["outcome"]
        doc = f" -> document {p['document'].rsplit('/', 1)[-1]}" if p["document"] else ""
        name = f" {p['filename']!r}" if p["filename"] else ""
        click.echo(f"    {p['path']:<10} {p['content_type']:<32} {p['size']:>9}  {outcome}{name}{doc}")


@main.group()
def tasks() -> None:
    """Look at and steer tasks."""


TASK_STATUSES = ["queued", "processing", "reviewing", "completed", "failed", "discarded"]


@tasks.command("list")
@click.option("--status", type=click.Choice(TASK_STATUSES), help="Only tasks in this state.")
@click.option("--queue", metavar="NAME", help="Only the tasks of this queue.")
@click.option("--upload", "upload_id", type=int, metavar="ID", help="Only the tasks of this upload.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000), help="At most this many.")
@click.option("--before", "cursor", type=int, metavar="ID", help="Only tasks with an id below this (paging).")
@json_option
@pass_ctx
@run_async
async def tasks_list(ctx: Ctx, status, queue, upload_id, limit, cursor, as_json) -> None:
    """List tasks, newest first: id, state, upload, attempts and the last error.

    With --json, one object per line (the HTTP API's representation).
    """
    from gateway import services as sv
    from gateway.runtime import open_runtime

    async with open_runtime(ctx.settings) as rt:
        async with rt.sessions() as s:
            queue_id = (await sv.queue_by_name(s, queue)).id if queue else None
            page = await sv.list_tasks(
                s, status=status, queue_id=queue_id, upload_id=upload_id, cursor=cursor, page_size=limit
            )
    urls = _urls(ctx.settings)
    for t in page.items:
        if as_json:
            click.echo(_dump(sv.task_dict(t, urls)))
        else:
            err = f"  {t.last_error[:80]}" if t.last_error else ""
            click.echo(f"{t.id:>7}  {t.status:10} upload {t.upload_id:<7} attempts {t.attempts}{err}")


@tasks.command("show")
@click.argument("task_id", type=int)
@json_option
@pass_ctx
@run_async
async def tasks_show(ctx: Ctx, task_id: int, as_json: bool) -> None:
    """Show one task: its state, attempts, last error, result and history of state changes."""
    from gateway import services as sv
    from gateway.runtime import open_runtime

    async with open_runtime(ctx.settings) as rt:
        async with rt.sessions() as s:
            t = await sv.get_task(s, task_id)
            events = await sv.task_events(s, task_id)
    d = sv.task_dict(t, _urls(ctx.settings), events)
    if as_json:
        click.echo(_dump(d))
        return
    click.echo(f"task {t.id}: {t.status} (upload {t.upload_id}, document {t.document_id}, attempts {t.attempts})")
    if t.last_error:
        click.echo(f"  last error: {t.last_error}")
    if t.result is not None:
        click.echo(f"  result: {_dump(t.result)}")
    for e in d["history"]:
        click.echo(f"  {e['at']}  {e['from'] or '-'} -> {e['to']}  by {e['by']}  {e['reason'] or ''}")


def _steer_command(action: str, summary: str):
    """`gateway tasks retry|complete|discard`: one task by id, or many by selector."""

    @tasks.command(action, help=summary)
    @click.argument("task_ids", nargs=-1, type=int)
    @click.option("--upload", "upload_id", type=int, help="The tasks of this upload.")
    @click.option(
        "--status",
        type=click.Choice(["queued", "processing", "reviewing", "completed", "failed", "discarded"]),
        help="The tasks in this state (default with --upload: every state the action applies to).",
    )
    @click.option("--reason", help="Why, kept in the task's history.")
    @json_option
    @pass_ctx
    @run_async
    async def command(ctx: Ctx, task_ids, upload_id, status, reason, as_json) -> None:
        import getpass

        from sqlalchemy import select

        from gateway import services as sv
        from gateway.errors import ConflictStatus, NotFound
        from gateway.queue.steer import STEERABLE_FROM, steer
        from gateway.runtime import open_runtime
        from gateway.storage import models as m

        if not task_ids and upload_id is None and status is None:
            raise click.UsageError("give task ids, --upload ID or --status STATE")
        if task_ids and (upload_id is not None or status is not None):
            raise click.UsageError("give either task ids or --upload/--status, not both")
        try:
            actor = f"cli:{getpass.getuser()}"
        except Exception:  # no user name in a container: still say where it came from
            actor = "cli"
        urls = _urls(ctx.settings)
        errors = 0
        async with open_runtime(ctx.settings) as rt:
            ids = list(task_ids)
            if not ids:
                async with rt.sessions() as s:
                    q = select(m.Task.id).order_by(m.Task.id)
                    if upload_id is not None:
                        await sv.get_upload(s, upload_id)  # NotFound → exit 1
                        q = q.where(m.Task.upload_id == upload_id)
                    states = [status] if status else [x.value for x in STEERABLE_FROM[action]]
                    ids = list((await s.scalars(q.where(m.Task.status.in_(states)))).all())
            for task_id in ids:
                try:
                    t = await steer(rt.sessions, task_id, action, actor=actor, reason=reason)
                except (ConflictStatus, NotFound) as e:
                    errors += 1
                    detail = str(e)
                    if isinstance(e, ConflictStatus) and getattr(e, "current", None):
                        allowed = " or ".join(sorted(x.value for x in STEERABLE_FROM[action]))
                        detail = f"task {task_id} is {e.current}; {action} applies to {allowed} tasks only"
                    # One task's error does not stop the others: report it and go on.
                    CliError(detail, e.code, EXIT_FAILED, as_json).show()
                    continue
                if as_json:
                    click.echo(_dump(sv.task_dict(t, urls)))
                else:
                    click.echo(f"task {t.id}: {action} -> {t.status}")
        if not as_json and not task_ids:
            click.echo(f"{len(ids) - errors} of {len(ids)} task(s) {action}", err=True)
        if errors:
            sys.exit(1)

    command.__name__ = f"tasks_{action}"
    return command


tasks_retry = _steer_command("retry", "Queue failed tasks again (the attempt count starts afresh).")
tasks_complete = _steer_command("complete", "Mark tasks in review as completed.")
tasks_discard = _steer_command("discard", "Drop queued, failed or reviewing tasks.")


# --- storage --------------------------------------------------------------------------


@main.group()
def storage() -> None:
    """Blob storage maintenance."""


@storage.command("gc")
@click.option("--min-age", default=3600, show_default=True, help="Only blobs older than this many seconds.")
@click.option("--dry-run", is_flag=True)
@json_option
@pass_ctx
@run_async
async def storage_gc(ctx: Ctx, min_age: int, dry_run: bool, as_json: bool) -> None:
    """Remove blobs no email or document references (left by failed ingests)."""
    from gateway.runtime import open_runtime
    from gateway.storage.gc import collect_orphans

    async with open_runtime(ctx.settings) as rt:
        removed = await collect_orphans(rt, min_age=min_age, dry_run=dry_run)
    if as_json:
        click.echo(_dump({"removed": removed, "dry_run": dry_run}))
    else:
        click.echo(f"{'would remove' if dry_run else 'removed'} {len(removed)} orphan blob(s)")


# --- keys -----------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """API keys for the HTTP API."""


@keys.command("create")
@click.option("--organization", required=True, help="The organization the key belongs to.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(["upload.create", "upload.read", "upload.edit", "task.read", "task.edit"]),
    help="Repeat for several scopes.",
)
@click.option("--name", help="A note to tell keys apart (e.g. the client's name).")
@json_option
@pass_ctx
@run_async
async def keys_create(ctx: Ctx, organization: str, scopes: tuple[str, ...], name: str | None, as_json: bool) -> None:
    """Create a key; it is printed once and stored only hashed."""
    from gateway.api.keys import create_key
    from gateway.runtime import open_runtime

    async with open_runtime(ctx.settings) as rt:
        created = await create_key(rt.sessions, organization, list(scopes), name)
    if as_json:
        click.echo(_dump(created.as_dict()))
        return
    click.echo(created.key)
    click.echo(
        f"key {created.id} for {organization} ({', '.join(created.scopes)}); it is shown only now, store it safely",
        err=True,
    )


@keys.command("list")
@json_option
@pass_ctx
@run_async
async def keys_list(ctx: Ctx, as_json: bool) -> None:
    """List keys (their prefix, never the key)."""
    from gateway.api.keys import key_dict, list_keys
    from gateway.runtime import open_runtime

    async with open_runtime(ctx.settings) as rt:
        rows = await list_keys(rt.sessions)
        items = [key_dict(k) for k in rows]
    for d in items:
        if as_json:
            click.echo(_dump(d))
        else:
            state = f"revoked {d['revoked_at']}" if d["revoked_at"] else "active"
            click.echo(
                f"{d['id']:>5}  {d['prefix']}…  {d['organization']:12} {state:30} {','.join(d['scopes'])}"
                f"  {d['name'] or ''}"
            )


@keys.command("revoke")
@click.argument("key_id", type=int)
@json_option
@pass_ctx
@run_async
async def keys_revoke(ctx: Ctx, key_id: int, as_json: bool) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    from gateway.api.keys import key_dict, revoke_key
    from gateway.runtime import open_runtime

    async with open_runtime(ctx.settings) as rt:
        row = await revoke_key(rt.sessions, key_id)
        d = key_dict(row)
    if as_json:
        click.echo(_dump(d))
    else:
        click.echo(f"key {key_id} revoked at {d['revoked_at']}")


if __name__ == "__main__":  # pragma: no cover
    main()
