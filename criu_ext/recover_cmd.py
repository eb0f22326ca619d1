"""``criu-ext recover``: undo on the source what an interrupted dump left."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("--run-dir", metavar="DIR", help="The run directory the dump used "
              "(default: $CRIU_EXT_RUN_DIR, or /run/criu-ext).")
@click.option("--wait", type=click.FloatRange(0, 3600), default=30.0, show_default=True,
              metavar="SECONDS", help="How long to wait for the interrupted dump's CRIU to end.")
@click.option("--dry-run", "-n", is_flag=True, help="Say what would be done; change nothing.")
@click.option("-v", "--verbose", count=True, help="More messages from the plugins (-v, -vv).")
def recover(run_dir: str | None, wait: float, dry_run: bool, verbose: int) -> None:
    """Put the source back after `criu-ext dump` or `migrate` died mid-dump.

    Each dump keeps a journal in the run directory while it changes the source
    (gtp devices removed, SCTP sockets swapped out, peers fenced). When criu-ext
    is killed, CRIU fails at its next step and lets the tasks run again; this
    command waits for that CRIU to end and runs the plugins' rollback from the
    journal, as a failed dump would have: the tunnels and associations come back
    bound to the running tasks. Dumps still in progress are left alone; a tree
    that is gone (the dump completed, or the tree ended) has nothing to put back.

    Exit status: 0 when nothing is left to recover, 1 when a rollback failed or
    a journal cannot be used (each named on one line), 2 on bad usage.
    """
    from criu_ext import journal as jr
    from criu_ext.plugin import Log
    from criu_ext.recover import recover as recover_one
    from criu_ext.rundir import RunDirError

    log = Log(sys.stderr, level=2 + min(verbose, 2))
    try:
        found = jr.entries(run_dir)
    except RunDirError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    if not found:
        click.echo("nothing to recover: no interrupted dump")
        return
    failed = 0
    for e in found:
        if isinstance(e, jr.JournalError):
            click.echo(f"Error: journal {e}", err=True)
            failed += 1
            continue
        out = recover_one(e, log, wait=wait, dry_run=dry_run)
        if out.failed:
            click.echo(f"Error: {out.message}", err=True)
            failed += 1
        else:
            click.echo(out.message)
    sys.exit(1 if failed else 0)
