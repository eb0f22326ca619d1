"""``gtp-dump`` and ``gtp-restore``: thin click commands over the gtp_util API.

Exit statuses are those of :mod:`gtp_util.errors`; every failure prints one line
to stderr.
"""

from __future__ import annotations

import functools
import sys

import click

from .errors import BadImage, GtpError, NoSuchTarget


def _netns(name: str | None, pid: int | None) -> str | None:
    from procns.netns import netns_path
    try:
        return netns_path(name=name, pid=pid)
    except FileNotFoundError as e:
        raise NoSuchTarget(e.strerror) from None
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _edge(prog: str):
    """Turn exceptions into one line and an exit status."""
    def wrap(f):
        @functools.wraps(f)
        def inner(*a, **kw):
            try:
                return f(*a, **kw)
            except GtpError as e:
                click.echo(f"{prog}: {e}", err=True)
                sys.exit(e.exit_code)
            except OSError as e:
                click.echo(f"{prog}: {e.strerror or e}"
                           + (f": {e.filename}" if e.filename else ''), err=True)
                sys.exit(9)
        return inner
    return wrap


target_options = [
    click.option('--netns', 'netns_name', metavar='NAME',
                 help='named network namespace (ip netns) or a path to one'),
    click.option('--pid', type=int, metavar='PID', help="the network namespace of this process"),
]


def _targets(f):
    for opt in reversed(target_options):
        f = opt(f)
    return f


@click.command(context_settings={'help_option_names': ['-h', '--help']})
@_targets
@click.option('-o', '--output', metavar='PATH',
              help='write the image here (a directory gets gtp.img, as in a CRIU image dir)')
@click.option('--json', 'as_json', is_flag=True, help='print the snapshot as JSON')
@click.option('--tunnels', is_flag=True, help="print PDP contexts like libgtpnl's gtp-tunnel list")
@click.option('--no-nat', is_flag=True, help='do not read NAT rules')
@_edge('gtp-dump')
def dump_main(netns_name, pid, output, as_json, tunnels, no_nat):
    """Snapshot the GTP user plane of a network namespace (default: the current one)."""
    import gtp_util
    if netns_name and pid:
        raise click.UsageError('give --netns or --pid, not both')
    snap = gtp_util.take_snapshot(_netns(netns_name, pid), with_nat=not no_nat)
    if output:
        path = gtp_util.save(snap, output)
        click.echo(f"gtp-dump: {len(snap.devices)} devices, {snap.n_contexts} PDP contexts, "
                   f"{len(snap.routes)} routes, {len(snap.nat_rules)} NAT rules -> {path}",
                   err=True)
    if as_json or tunnels:
        for dev in snap.devices:
            dev.contexts.sort()  # the kernel's order is its hash order: list them sorted
    if as_json:
        click.echo(gtp_util.to_json(snap))
    if tunnels:
        out = sys.stdout
        for line in gtp_util.tunnel_lines(snap):
            out.write(line + '\n')
    if not (output or as_json or tunnels):
        for dev in snap.devices:
            click.echo(f"{dev.name}: {len(dev.contexts)} PDP contexts, role "
                       f"{'sgsn' if dev.role else 'ggsn'}, sockets v0 {dev.sock0.describe()}, "
                       f"v1 {dev.sock1.describe()}")
        for r in snap.routes:
            click.echo(f"route {r.cidr()} dev {r.dev} table {r.table}")
        for n in snap.nat_rules:
            click.echo(f"nat {n.backend} {n.chain} {n.rule}")


def _load(path: str):
    """An image file, an image directory, or a JSON snapshot (a file starting with '{')."""
    import gtp_util

    from .image import read_file
    path, data = read_file(path)
    if data[:1] == b'{':
        from .format import MAX_JSON, from_json
        if len(data) > MAX_JSON:  # parsed JSON costs tens of times its size in memory
            raise BadImage(f"{path}: JSON snapshot of {len(data)} bytes, more than the "
                           f"{MAX_JSON} accepted (use the binary image)")
        try:
            text = data.decode('utf-8')
        except UnicodeDecodeError as e:
            raise BadImage(f"{path}: not UTF-8 text (byte {e.start})") from None
        return from_json(text, path)
    try:
        return gtp_util.loads(data)
    except BadImage as e:
        raise BadImage(f"{path}: {e}") from None


@click.command(context_settings={'help_option_names': ['-h', '--help']})
@click.argument('snapshot', metavar='SNAPSHOT')
@_targets
@click.option('--bind-pid', type=int, metavar='PID',
              help="re-create fd-bound devices on this task's sockets (default: the PID "
                   "recorded in the snapshot)")
@click.option('--dry-run', is_flag=True, help='print the plan, change nothing')
@click.option('--check', 'do_check', is_flag=True,
              help='compare the live state with the snapshot; exit 1 on any difference')
@click.option('--batch', type=click.IntRange(1, 65536), default=2048, show_default=True,
              help='PDP context requests per netlink send')
@_edge('gtp-restore')
def restore_main(snapshot, netns_name, pid, bind_pid, dry_run, do_check, batch):
    """Restore a snapshot (image file, image directory or JSON) into a network namespace."""
    import gtp_util
    if netns_name and pid:
        raise click.UsageError('give --netns or --pid, not both')
    snap = _load(snapshot)
    netns = _netns(netns_name, pid)
    if do_check:
        diffs = gtp_util.check(snap, netns)
        for d in diffs:
            click.echo(d)
        if diffs:
            sys.exit(1)
        click.echo(f"live state equals the snapshot ({len(snap.devices)} devices, "
                   f"{snap.n_contexts} PDP contexts)")
        return
    res = gtp_util.restore(snap, netns, bind_pid=bind_pid, dry_run=dry_run, batch=batch)
    if dry_run:
        for line in res.plan.describe():
            click.echo(line)
        return
    if res.already_present:
        click.echo("already present: the live state matches the snapshot; nothing changed")
        return
    click.echo(f"restored {len(res.created_devices)} devices, {res.contexts} PDP contexts, "
               f"{len(res.plan.routes)} routes, {len(res.plan.nat_rules)} NAT rules, "
               f"{len(res.plan.sysctls)} sysctls")
