"""``criu-ext check``: the first thing to run on a machine."""

from __future__ import annotations

import sys

import click

from criu_ext import check as checks


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def check(as_json: bool) -> None:
    """Report whether this machine can run the toolkit.

    Probes, in a scratch network namespace: the kernel release, CAP_NET_ADMIN,
    creating a gtp link, opening SCTP sockets, sctp_diag, SCTP repair mode,
    pidfd_getfd, and CRIU (found, version, `criu check`).

    Exit status: 0 when every required capability is present, 1 otherwise.
    SCTP repair mode and sctp_diag are optional: without them SCTP associations
    can only be carried by a restart the peer sees.
    """
    findings = checks.run_all()
    click.echo(checks.as_json(findings) if as_json else checks.as_table(findings))
    sys.exit(0 if checks.usable(findings) else 1)
