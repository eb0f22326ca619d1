"""``criu-ext hook-script``: write the /bin/sh action-script hook with a given interpreter."""

from __future__ import annotations

import click

from criu_ext import launcher


@click.command("hook-script")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--python", help="interpreter to run the hook with (default: this one)")
def hook_script(path, python):
    """Write the action-script hook to PATH (or print it), with this interpreter.

    The same /bin/sh script as the installed `criu-ext-hook`, with the Python
    interpreter and the directory holding criu_ext written in: for a hook at a
    custom location or with another interpreter. Give PATH to CRIU with
    --action-script, or as `action-script PATH` in a CRIU configuration file.
    Python starts once per dump or restore (pre-dump / pre-restore); later phases
    are answered by the shell, through the session process.
    """
    if path:
        click.echo(launcher.install(path, python))
    else:
        click.echo(launcher.render(python), nl=False)
