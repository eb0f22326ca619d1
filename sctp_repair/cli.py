"""``sctp-repair``: probe for repair mode, dump a live association, show a dump.

Thin: argument parsing and printing only; the work is in ``sctp_repair``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys

import click

from procns.fds import steal_fd
from procns.files import MiB, read_bytes, write_atomic

from . import abi
from .repair import RepairError, probe, resume, save
from .state import AssocState


@click.group(help="SCTP association state through the kernel's repair mode.")
def main() -> None:
    pass


@main.command("probe", help="Say whether the running kernel has SCTP repair mode "
                            "(exit status 0 if it has, 1 if not).")
def probe_cmd() -> None:
    result = probe()
    click.echo(result.detail)
    sys.exit(0 if result.repair else 1)


@main.command(help="Save the association of socket FD of process PID to OUTPUT.")
@click.option("--pid", type=int, required=True, help="process holding the socket")
@click.option("--fd", "fd", type=int, required=True, help="its file descriptor number")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              required=True, help="file for the saved state (protobuf)")
@click.option("--wait", type=float, default=2.0, show_default=True,
              help="seconds to wait for queued or unacknowledged data to drain")
@click.option("--keep-repair", is_flag=True,
              help="leave the socket in repair mode, so that closing it (or killing "
                   "its owner) tells the peer nothing; the default turns it off again")
def dump(pid: int, fd: int, output: str, wait: float, keep_repair: bool) -> None:
    found = probe()
    if not found.repair:
        raise click.ClickException(found.detail)
    try:
        copy = steal_fd(pid, fd)
    except OSError as e:
        raise click.ClickException(f"cannot take fd {fd} of process {pid}: {e.strerror}")
    try:
        sock = socket.socket(fileno=copy)
    except OSError:
        os.close(copy)
        raise click.ClickException(f"fd {fd} of process {pid} is not a socket")
    try:
        if sock.proto != abi.IPPROTO_SCTP or sock.type != socket.SOCK_STREAM:
            raise click.ClickException(f"fd {fd} of process {pid} is not a one-to-one "
                                       "SCTP socket")
        try:
            state = save(sock, wait=wait)
        except RepairError as e:
            with contextlib.suppress(RepairError):
                resume(sock)    # leave the owner's socket as it was
            raise click.ClickException(str(e))
        if not keep_repair:
            resume(sock)
    finally:
        sock.detach()
        os.close(copy)
    write_atomic(output, state.to_bytes(), 0o644)
    click.echo(f"saved [{state.local_addr}]:{state.local_port} <-> "
               f"[{state.peer_addr}]:{state.peer_port} to {output}")


MAX_STATE = 4 * MiB  # a saved association (65535 streams each way fit in 1.5 MiB)


@main.command(help="Print a saved association state. Exit status 1, with one line on "
                   "stderr, when PATH is not a regular file of at most 4 MiB holding one.")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of text")
def show(path: str, as_json: bool) -> None:
    try:
        state = AssocState.from_bytes(read_bytes(path, MAX_STATE))
    except OSError as e:
        raise click.ClickException(str(e) if not e.filename else f"{path}: {e.strerror}")
    except ValueError as e:
        raise click.ClickException(f"{path}: {e}")
    if as_json:
        click.echo(json.dumps(state.to_dict(), indent=2))
        return
    click.echo(f"local  [{state.local_addr}]:{state.local_port}")
    click.echo(f"peer   [{state.peer_addr}]:{state.peer_port}"
               + "".join(f", [{a}]" for a in state.peer_paths))
    click.echo(f"vtags  mine {state.my_vtag:#010x} peer {state.peer_vtag:#010x}")
    click.echo(f"tsn    next {state.next_tsn} acked-by-peer {state.ctsn_ack_point} "
               f"acked-to-peer {state.peer_ctsn}")
    click.echo(f"rwnd   peer {state.peer_rwnd} ours {state.rwnd}")
    caps = ",".join(str(c.name) for c in abi.Cap if c & state.peer_caps) or "-"
    click.echo(f"caps   {caps}")
    click.echo(f"rto    initial {state.rto_initial} min {state.rto_min} max {state.rto_max} "
               f"now {state.rto} ms; hb {state.hbinterval} ms; pathmtu {state.pathmtu}")
    click.echo(f"streams out {len(state.out_streams)} in {len(state.in_streams)}")
    for i, s in enumerate(state.out_streams):
        click.echo(f"  out {i}: next {s.mid}" + (f" uo {s.mid_uo}" if s.mid_uo else ""))
    for i, s in enumerate(state.in_streams):
        click.echo(f"  in  {i}: next {s.mid}" + (f" uo {s.mid_uo}" if s.mid_uo else ""))
