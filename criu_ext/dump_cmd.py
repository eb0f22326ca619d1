"""``criu-ext dump``: checkpoint a process tree through CRIU's RPC, plugins in-process."""

from __future__ import annotations

import click

from criu_ext.rpc_cli import criu_options, fail, images_dir_abs, load_plugins, parse_extra, report


@click.command()
@click.option("-t", "--tree", "pid", type=int, required=True, help="PID of the tree's root task")
@click.option("-R", "--leave-running", is_flag=True,
              help="leave the tasks running after the dump (plugins put the source back)")
@click.option("--sctp-fallback", type=click.Choice(["restart"]),
              help="on a kernel without SCTP repair mode, carry established associations by "
                   "restarting them from the destination (the peer sees an SCTP restart); "
                   "without it such a dump is refused")
@criu_options
def dump(pid, leave_running, sctp_fallback, images_dir, shell_job, tcp_established, external, log_file,
         log_level, config_file, extra, plugin_spec, criu_bin, as_json, quiet):
    """Dump the tree rooted at PID into the image directory.

    CRIU runs as `criu swrk` and calls back at each phase; the plugins (gtp,
    netfilter, ...) answer in this process. If the dump fails after they acted,
    they put the source back as it was before this command exits.
    """
    from criu_ext import phases as ph
    from criu_ext.rpc import CriuError, Options, run
    from criu_ext.session import Session

    plugins, log = load_plugins(plugin_spec, quiet)
    images_dir = images_dir_abs(images_dir)
    try:
        opts = Options(images_dir=images_dir, pid=pid, tcp_established=tcp_established,
                       leave_running=leave_running, shell_job=shell_job, log_file=log_file,
                       log_level=log_level, external=list(external), config_file=config_file,
                       extra=parse_extra(extra))
    except ValueError as exc:
        fail(exc)
    session = Session(ph.DUMP, images_dir, plugins, "rpc", log,
                      {"sctp_fallback": sctp_fallback} if sctp_fallback else None)
    try:
        result = run(ph.DUMP, opts, session, criu_bin)
    except (CriuError, ValueError) as exc:
        fail(exc)
    report(ph.DUMP, result, session, images_dir, as_json, {})
