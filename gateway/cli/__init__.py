"""The `gateway` command: parse arguments, call services, print (or --json).

Exit status: 0 success; 1 the command ran but something it did failed (a message
rejected, a task in the wrong state, not found); 2 bad usage or configuration;
75 the database or blob storage is unavailable (temporary: try again later).
Under ``--json`` an error is one ``{"detail", "code"}`` object on stderr.
"""

from __future__ import annotations

import sys

import click

from gateway.cli.base import (
    LOG_FORMATS, Ctx, GatewayGroup, _dump, cli_errors, configure_logging, json_option, pass_ctx, run_async,
)


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


# The commands of the other modules register themselves on `main`.
from gateway.cli import records, replay  # noqa: E402,F401
