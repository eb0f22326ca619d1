"""``criu-ext restore``: restore a process tree through CRIU's RPC, plugins in-process."""

from __future__ import annotations

import click

from criu_ext.rpc_cli import criu_options, fail, images_dir_abs, load_plugins, parse_extra, report


@click.command()
@click.option("--pidfile", type=click.Path(dir_okay=False), help="write the restored root's PID here")
@criu_options
def restore(pidfile, images_dir, shell_job, tcp_established, external, log_file, log_level,
            config_file, extra, plugin_spec, criu_bin, as_json, quiet):
    """Restore the tree dumped in the image directory (it runs detached).

    The plugins re-create what they saved (gtp devices bound to the restored
    sockets, PDP contexts, routes, masquerade) before the tasks run again; if
    one fails, CRIU aborts the restore and this command says why.
    """
    from criu_ext import phases as ph
    from criu_ext.rpc import CriuError, Options, run
    from criu_ext.session import Session

    plugins, log = load_plugins(plugin_spec, quiet)
    images_dir = images_dir_abs(images_dir)
    opts = Options(images_dir=images_dir, tcp_established=tcp_established, shell_job=shell_job,
                   log_file=log_file, log_level=log_level, external=list(external),
                   config_file=config_file, extra=parse_extra(extra))
    session = Session(ph.RESTORE, images_dir, plugins, "rpc", log)
    try:
        result = run(ph.RESTORE, opts, session, criu_bin)
    except (CriuError, ValueError) as exc:
        fail(exc)
    pid = result.resp.restore.pid
    # CRIU only logs failures after the tasks were restored (post-resume...); say them here.
    late = [t for t in session.timings if not t["ok"]]
    if late:
        fail(f"restore: plugin {late[0]['plugin']} failed at {late[0]['phase']} "
             f"(restored PID {pid}); see the messages above")
    if pidfile:
        with open(pidfile, "w", encoding="ascii") as f:
            f.write(f"{pid}\n")
    report(ph.RESTORE, result, session, images_dir, as_json, {"pid": pid})
