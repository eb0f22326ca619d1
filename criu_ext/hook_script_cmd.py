"""``criu-ext hook-script``: write the fast /bin/sh launcher of the action-script entry."""

from __future__ import annotations

import click

from criu_ext import launcher


@click.command("hook-script")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--python", help="interpreter to run the hook with (default: this one)")
def hook_script(path, python):
    """Write the action-script launcher to PATH (or print it).

    Give PATH to CRIU with --action-script, or as `action-script PATH` in a CRIU
    configuration file. Phases in which no plugin acts end in the shell without
    starting Python. `criu-ext-hook` (a console script) does the same job with a
    slower start.
    """
    if path:
        click.echo(launcher.install(path, python))
    else:
        click.echo(launcher.render(python), nl=False)
