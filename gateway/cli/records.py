"""Look and steer from a shell: `gateway uploads`, `gateway emails`, `gateway tasks`."""

from __future__ import annotations

import sys

import click

from gateway.cli.base import EXIT_FAILED, CliError, Ctx, _dump, _urls, json_option, log, pass_ctx, run_async
from gateway.cli import main


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
        if email.authentication:
            lines.append(f"  sender    {_verdict_line(email.authentication)}")
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
    if d.get("authentication"):
        click.echo(f"  sender    {_verdict_line(d['authentication'])}")
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


def _verdict_line(v: dict) -> str:
    """spf=pass dkim=pass(supplier.example) dmarc=pass arc=none, one line."""
    dkim = ",".join(f"{d.get('result')}({d.get('domain')})" for d in v.get("dkim") or []) or "none"
    parts = [f"spf={(v.get('spf') or {}).get('result')}", f"dkim={dkim}",
             f"dmarc={(v.get('dmarc') or {}).get('result')}", f"arc={(v.get('arc') or {}).get('result')}"]
    if v.get("ignored"):
        parts.append("(a forged Authentication-Results was ignored)")
    return " ".join(parts)
