"""`gateway replay`."""

from __future__ import annotations

import sys

import click

from gateway.cli.base import EXIT_FAILED, CliError, Ctx, _dump, json_option, pass_ctx, run_async
from gateway.errors import ConfigError
from gateway.observability import configure_logging
from gateway.cli import main


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


