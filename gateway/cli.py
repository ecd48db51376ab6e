"""The `gateway` command: parse arguments, call services, print (or --json).

Exit status: 0 success, 1 the command ran but something it did failed (a message
rejected, a task in the wrong state, not found), 2 bad usage or configuration.
"""

from __future__ import annotations

import asyncio
import json
import sys
from functools import wraps
from typing import Any

import click

from gateway.config import load_settings
from gateway.errors import ConfigError, GatewayError
from gateway.observability import configure_logging


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


def run_async(fn):
    """Run an async command body; map gateway errors to a message and exit status."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return asyncio.run(fn(*args, **kwargs))
        except ConfigError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except GatewayError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)

    return wrapper


class Ctx:
    def __init__(self, config: str | None) -> None:
        self.config_path = config
        self._settings = None

    @property
    def settings(self):
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_path)
            except ConfigError as e:
                click.echo(f"error: {e}", err=True)
                sys.exit(2)
            configure_logging(self._settings.logging.format, self._settings.logging.level)
        return self._settings


pass_ctx = click.make_pass_decorator(Ctx)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON only.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    envvar="GATEWAY_CONFIG",
    default=None,
    help="Config file (default: $GATEWAY_CONFIG, then ./config.toml).",
)
@click.pass_context
def main(click_ctx: click.Context, config: str | None) -> None:
    """Email-ingestion gateway."""
    click_ctx.obj = Ctx(config)


# --- serve ----------------------------------------------------------------------------


@main.command()
@pass_ctx
def serve(ctx: Ctx) -> None:
    """Run what the config enables (SMTP, IMAP, workers, HTTP API) until SIGTERM."""
    from gateway.daemon import run_daemon

    sys.exit(run_daemon(ctx.settings))


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
@click.option("--revision", default="heads", show_default=True)
@pass_ctx
@run_async
async def db_upgrade(ctx: Ctx, revision: str) -> None:
    """Apply migrations (Alembic)."""
    from gateway.storage import db as dbm

    engine = dbm.create_engine(ctx.settings.storage.database_url)
    try:
        await dbm.upgrade(engine, revision)
        current, head = await dbm.migration_state(engine)
    finally:
        await engine.dispose()
    click.echo(f"database at revision {', '.join(sorted(current))} (code: {', '.join(sorted(head))})")


# --- replay ---------------------------------------------------------------------------


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--queue", help="Ingest into this queue instead of routing by address.")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64))
@json_option
@pass_ctx
@run_async
async def replay(ctx: Ctx, paths: tuple[str, ...], queue: str | None, concurrency: int, as_json: bool) -> None:
    """Ingest .eml files, folders (recursive) and mbox files."""
    from gateway.ingress.replay import replay as do_replay
    from gateway.runtime import open_runtime

    settings = ctx.settings
    if queue and settings.queue(queue) is None:
        raise ConfigError(f"unknown queue {queue!r}; the config has: {', '.join(q.name for q in settings.queues)}")
    counts = {"created": 0, "duplicate": 0, "rejected": 0, "error": 0}
    progress = None
    if not as_json and sys.stderr.isatty():
        from rich.progress import Progress

        # The line per message already says what happened; info logs would
        # tear the progress bar apart on a terminal.
        if settings.logging.level in ("debug", "info"):
            configure_logging(settings.logging.format, "warning")
        progress = Progress(transient=True)
        bar = progress.add_task("replaying", total=None)
        progress.start()
    try:
        async with open_runtime(settings) as rt:
            async for outcome in do_replay(rt.ingestor, list(paths), queue=queue, concurrency=concurrency):
                counts[outcome.status] += 1
                if progress:
                    progress.advance(bar)
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
    total = sum(counts.values())
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    if not as_json:
        click.echo(f"{total} messages: {summary}")
    else:
        click.echo(f"{total} messages: {summary}", err=True)
    if counts["rejected"] or counts["error"]:
        sys.exit(1)


# --- uploads / tasks ------------------------------------------------------------------


def _urls(settings):
    from gateway.services import Urls

    return Urls(settings.http.base_url)


@main.group()
def uploads() -> None:
    """Look at uploads."""


@uploads.command("list")
@click.option("--queue")
@click.option("--status", type=click.Choice(["processing", "reviewing", "completed", "failed", "partial"]))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--before", "cursor", type=int, help="Only uploads with an id below this (paging).")
@json_option
@pass_ctx
@run_async
async def uploads_list(ctx: Ctx, queue, status, limit, cursor, as_json) -> None:
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
    click.echo(f"upload {u.id}: {u.name}")
    click.echo(f"  queue    {u.queue.name}")
    click.echo(f"  status   {status.value}")
    click.echo(f"  created  {d['created_at']}")
    if email is not None:
        click.echo(f"  email    {email.id} from {email.from_addr} ({email.source}, {email.size} bytes)")
        if email.defects:
            click.echo(f"  defects  {'; '.join(email.defects[:5])}")
    tasks_by_doc = {t.document_id: t for t in tasks}
    for doc in docs:
        t = tasks_by_doc.get(doc.id)
        task = f"task {t.id} {t.status}" if t else "(with body)"
        dup = f" duplicate of document {doc.duplicate_of}" if doc.duplicate_of else ""
        click.echo(f"  - {doc.kind:10} {doc.filename} [{doc.content_type}, {doc.size} B] {task}{dup}")


@main.group()
def tasks() -> None:
    """Look at and steer tasks."""


@tasks.command("list")
@click.option("--status", type=click.Choice(["queued", "processing", "reviewing", "completed", "failed", "discarded"]))
@click.option("--queue")
@click.option("--upload", "upload_id", type=int)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--before", "cursor", type=int)
@json_option
@pass_ctx
@run_async
async def tasks_list(ctx: Ctx, status, queue, upload_id, limit, cursor, as_json) -> None:
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
                    if isinstance(e, ConflictStatus) and getattr(e, "current", None):
                        allowed = " or ".join(sorted(x.value for x in STEERABLE_FROM[action]))
                        e = f"task {task_id} is {e.current}; {action} applies to {allowed} tasks only"
                    click.echo(f"error: {e}", err=True)
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
