"""``criu-ext migrate``, ``criu-ext receive``, ``criu-ext tls-init``: thin commands over
criu_ext.migrate (docs/migrate.md)."""

from __future__ import annotations

import json
import sys

import click

from criu_ext.migrate.wire import NETWORK_LOCKS


def _stacked(opts):
    def apply(f):
        for o in reversed(opts):
            f = o(f)
        return f
    return apply


tls_options = _stacked([
    click.option("--tls-cacert", required=True, type=click.Path(dir_okay=False),
                 help="CA certificate (PEM) that signed the other end's certificate"),
    click.option("--tls-cert", required=True, type=click.Path(dir_okay=False),
                 help="this end's certificate (PEM); the receiver's must name the "
                      "address the source dials"),
    click.option("--tls-key", required=True, type=click.Path(dir_okay=False),
                 help="this end's private key (PEM)"),
])


def criu_options(at: str, other_end: str):
    """The options both ends share: plugins, CRIU binary and log level, patience."""
    return _stacked([
        click.option("--plugins", "plugin_spec", envvar="CRIU_EXT_PLUGINS", metavar="SPEC",
                     help=f"plugins at {at} (default: every default plugin; "
                          "env CRIU_EXT_PLUGINS)"),
        click.option("--criu", "criu_bin", default="criu", show_default=True, envvar="CRIU",
                     metavar="PATH", help="the CRIU binary (env CRIU)"),
        click.option("-v", "--log-level", type=click.IntRange(0, 4), default=2,
                     show_default=True, help="CRIU's log level"),
        click.option("--timeout", type=click.FloatRange(1), default=300, show_default=True,
                     help=f"seconds to wait for the {other_end} at any step"),
    ])


def host_port(text: str, what: str, any_port: bool = False) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not (0 if any_port else 1) <= int(port) < 65536:
        raise click.BadParameter(f"{text!r}: expected HOST:PORT", param_hint=what)
    return host, int(port)


def _tls(cacert, cert, key):
    from criu_ext.migrate.tls import TlsFiles

    return TlsFiles(cacert, cert, key)


@click.command()
@click.option("-t", "--pid", "pid", type=int, required=True, help="PID of the tree's root task")
@click.option("--to", "dest", required=True, metavar="HOST:PORT",
              help="the receiver (`criu-ext receive --listen`)")
@tls_options
@click.option("--no-pre-copy", is_flag=True,
              help="one shot: every page goes while the tasks are frozen")
@click.option("--max-rounds", type=click.IntRange(1, 64), default=8, show_default=True,
              help="pre-copy: at most this many pre-dump rounds")
@click.option("--min-pages", type=click.IntRange(0), default=64, show_default=True,
              help="pre-copy: stop once a round wrote fewer pages than this")
@click.option("--tcp-established", is_flag=True, help="CRIU --tcp-established (both ends)")
@click.option("--shell-job", is_flag=True, help="CRIU --shell-job (both ends)")
@click.option("--network-lock", type=click.Choice(NETWORK_LOCKS), default="nftables",
              show_default=True,
              help="CRIU --network-lock (both ends): nftables locks in CRIU's own process, "
                   "iptables (CRIU's default) starts iptables-restore while the tasks "
                   "are frozen")
@click.option("--external", multiple=True, metavar="RES", help="CRIU --external at dump (repeatable)")
@click.option("--stage", is_flag=True,
              help="make-before-break for a GTP user plane: stage it in the receiver's "
                   "--stage-netns during pre-copy, keep it forwarding here while the tasks "
                   "are frozen, then switch the --switch-link links over (docs/migrate.md)")
@click.option("--switch-link", "switch_links", multiple=True, metavar="OUTER",
              help="with --stage: a link of this host taken off its bridge at the switch "
                   "(the function's outer veth end; repeatable)")
@criu_options("dump", "receiver")
@click.option("--work-dir", type=click.Path(file_okay=False, exists=True),
              help="where the source's image directories go (default: $TMPDIR)")
@click.option("--dry-run", is_flag=True,
              help="check both ends (criu check, plugins, what the tree needs); change nothing")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("-q", "--quiet", is_flag=True, help="plugin messages: errors only")
def migrate(pid, dest, tls_cacert, tls_cert, tls_key, no_pre_copy, max_rounds, min_pages,
            tcp_established, shell_job, network_lock, external, stage, switch_links, plugin_spec,
            criu_bin, log_level, timeout, work_dir, dry_run, as_json, quiet):
    """Move the task tree rooted at PID to a `criu-ext receive` on another host.

    Memory is pre-copied through CRIU's page server (TLS) while the tasks run,
    then the tasks are frozen for the final dump; the destination restores them
    with the plugins. Until the destination says the tasks are restored, any
    failure leaves them running here, with all their state. Exit status 0 only
    when the tasks run on the destination.
    """
    from criu_ext.migrate.policy import Policy
    from criu_ext.migrate.report import Progress, summary
    from criu_ext.migrate.source import MigrateConfig, MigrationFailed
    from criu_ext.migrate.source import dry_run as check
    from criu_ext.migrate.source import migrate as go
    from criu_ext.plugin import Log

    cfg = MigrateConfig(pid=pid, dest=host_port(dest, "--to"),
                        tls=_tls(tls_cacert, tls_cert, tls_key), pre_copy=not no_pre_copy,
                        policy=Policy(max_rounds=max_rounds, min_pages=min_pages),
                        tcp_established=tcp_established, shell_job=shell_job,
                        network_lock=network_lock, external=list(external),
                        plugin_spec=plugin_spec, criu=criu_bin,
                        log_level=log_level, timeout=timeout, work_dir=work_dir,
                        stage=stage, switch_links=list(switch_links))
    if switch_links and not stage:
        raise click.BadParameter("only with --stage", param_hint="--switch-link")
    if stage and not switch_links:  # both copies would be on the fabric at once
        raise click.BadParameter("the links to take off the fabric at the switch are "
                                 "needed (--switch-link)", param_hint="--stage")
    log = Log(sys.stderr, 1 if quiet else 2)
    if dry_run:
        res = check(cfg, log)
        if as_json:
            click.echo(json.dumps(res, indent=1))
        else:
            for end in ("source", "destination"):
                probs = res[end].get("problems", [])
                click.echo(f"{end}: {'ready' if not probs else '; '.join(probs)}")
        sys.exit(0 if res["ok"] else 1)
    try:
        rep = go(cfg, log, Progress())
    except MigrationFailed as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "failed_phase": exc.phase, "error": exc.reason}))
        tail = "" if exc.phase == "resume" else "; the tasks run on here"
        raise click.ClickException(f"migrate failed at {exc.phase}: {exc.reason}{tail}")
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=1))
    else:
        click.echo(summary(rep))


@click.command()
@click.option("--listen", required=True, metavar="ADDR:PORT",
              help="address and port to accept the source on (port 0: any, see --port-file)")
@tls_options
@click.option("--work-dir", default="/var/lib/criu-ext/receive", show_default=True,
              type=click.Path(file_okay=False), help="where incoming images go (removed after)")
@click.option("--external", multiple=True, metavar="RES",
              help="CRIU --external at restore, e.g. 'veth[eth0]:fn-eth0@br0' (repeatable)")
@click.option("--stage-netns", type=click.Path(exists=True, dir_okay=False),
              help="for a source with --stage: the function's netns made here beforehand "
                   "(links and addresses, outer ends off the fabric), where its user plane "
                   "is staged and its tasks restored")
@click.option("--switch-link", "switch_links", multiple=True, metavar="OUTER@BRIDGE",
              help="with --stage-netns: a link of this host put on BRIDGE at the switch "
                   "(the function's outer veth end; repeatable)")
@criu_options("restore", "source")
@click.option("--port-file", type=click.Path(dir_okay=False),
              help="write the listening port here once listening")
@click.option("--keep-going", is_flag=True, help="serve migrations until killed (default: one)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.option("-q", "--quiet", is_flag=True, help="plugin messages: errors only")
def receive(listen, tls_cacert, tls_cert, tls_key, work_dir, external, stage_netns,
            switch_links, plugin_spec, criu_bin, log_level, timeout, port_file, keep_going,
            as_json, quiet):
    """Accept a migration from `criu-ext migrate` and restore it here with the plugins.

    Only a source whose certificate the CA signed gets past the TLS handshake;
    others are refused in one line and the receiver waits on. Exits 0 once the
    migrated tasks run here; on failure the incoming images and anything
    restored are removed and the exit status is 1.
    """
    import os

    from criu_ext.migrate.destination import ReceiveConfig, ReceiveFailed, serve
    from criu_ext.migrate.tls import TlsError
    from criu_ext.plugin import Log
    from procns.files import write_atomic

    cfg = ReceiveConfig(listen=host_port(listen, "--listen", any_port=True),
                        tls=_tls(tls_cacert, tls_cert, tls_key), work_dir=os.path.abspath(work_dir),
                        external=list(external), plugin_spec=plugin_spec, criu=criu_bin,
                        timeout=timeout, log_level=log_level,
                        stage_netns=os.path.abspath(stage_netns) if stage_netns else None,
                        switch_links=list(switch_links))
    for spec in switch_links:
        name, sep, bridge = spec.partition("@")
        if not (name and sep and bridge):
            raise click.BadParameter(f"{spec!r}: OUTER@BRIDGE expected", param_hint="--switch-link")
    if switch_links and not stage_netns:
        raise click.BadParameter("only with --stage-netns", param_hint="--switch-link")
    if stage_netns and not switch_links:
        raise click.BadParameter("the links to put on the fabric at the switch are needed "
                                 "(--switch-link)", param_hint="--stage-netns")
    log = Log(sys.stderr, 1 if quiet else 3)

    def ready(port: int) -> None:
        if port_file:
            write_atomic(port_file, f"{port}\n", 0o644)

    try:
        res = serve(cfg, log, once=not keep_going, ready=ready)
    except ReceiveFailed as exc:
        raise click.ClickException(f"receive failed at {exc.phase}: {exc.reason}; "
                                   "nothing was left here")
    except (TlsError, OSError) as exc:
        raise click.ClickException(f"receive: {exc}")
    if as_json:
        click.echo(json.dumps(res, indent=1))
    elif res.get("dry_run"):
        click.echo(f"checked for a source: {'ready' if res['ok'] else '; '.join(res['problems'])}")
    else:
        click.echo(f"received: the tasks run here as PID {res['pid']} "
                   f"(restore {res['restore_s']:.2f} s)")


@click.command("tls-init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--host", "hosts", multiple=True, required=True, metavar="NAME=ADDR[,ADDR...]",
              help="a host certificate NAME.pem for these addresses or DNS names (repeatable)")
@click.option("--days", type=click.IntRange(1, 3650), default=30, show_default=True)
def tls_init(directory, hosts, days):
    """Make a test CA and host certificates in DIRECTORY with openssl.

    For a lab or a test: ca.pem, ca-key.pem, and NAME.pem + NAME-key.pem per
    --host. Both ends of a migration use the same CA; each uses its own pair.
    """
    from criu_ext.migrate.tls import TlsError, make_test_pki

    spec = {}
    for h in hosts:
        name, sep, addrs = h.partition("=")
        if not sep or not name or not addrs:
            raise click.BadParameter(f"{h!r}: expected NAME=ADDR[,ADDR...]", param_hint="--host")
        spec[name] = [a for a in addrs.split(",") if a]
    try:
        made = make_test_pki(directory, spec, days)
    except TlsError as exc:
        raise click.ClickException(str(exc))
    for name, files in made.items():
        click.echo(f"{name}: --tls-cacert {files.cacert} --tls-cert {files.cert} --tls-key {files.key}")
