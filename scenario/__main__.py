"""``python -m scenario``: run the migration scenario (in the VM) or render its report (anywhere)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

FUNCTIONS = ("spgw", "hss", "mme")
ENGINES = ("criu-ext", "podman")  # scenario.engines.make_engine's; not imported: render runs anywhere


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Mobile-core live migration between two hosts, measured."""


@main.command("run")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="directory for results.json and timeline.json")
@click.option("--ues", type=click.IntRange(1, 100_000), default=200, show_default=True,
              help="UEs (PDP contexts) on the SPGW, each pinging every 100 ms")
@click.option("--repeat", "-r", type=click.IntRange(1, 50), default=3, show_default=True,
              help="migrations per function, each of a freshly started function, host A -> B")
@click.option("--subscribers", type=click.IntRange(1, 10_000_000), default=100_000,
              show_default=True, help="subscribers in the HSS's in-memory database")
@click.option("--only", type=click.Choice(FUNCTIONS), multiple=True,
              help="migrate only these functions (repeatable; default: all)")
@click.option("--engine", "engines", type=click.Choice(ENGINES), multiple=True,
              help="how the functions run and move (repeatable; default criu-ext): criu-ext: "
              "tasks in a netns, moved by criu-ext migrate / receive; podman: Podman "
              "containers, moved by podman container checkpoint --export / restore "
              "--import through criu-ext-criu")
def run_cmd(out: Path, ues: int, repeat: int, subscribers: int, only: tuple[str, ...],
            engines: tuple[str, ...]) -> None:
    """Run the scenario. Needs root, gtp, SCTP and CRIU: run it inside the test VM."""
    from criu_ext.check import probe_in_scratch_netns
    from scenario.run import run

    missing = [f.name for f in probe_in_scratch_netns() if f.required and not f.ok]
    if missing:
        raise click.ClickException(f"this kernel lacks {', '.join(missing)}: "
                                   "run the scenario through scripts/migrate (it boots a VM)")
    try:
        run(out, ues, repeat, subscribers, list(only or FUNCTIONS),
            engines=engines or ("criu-ext",))
    except KeyboardInterrupt:
        sys.exit(130)


@main.command("render")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--no-png", is_flag=True, help="skip the PNG timeline")
def render_cmd(out: Path, no_png: bool) -> None:
    """Print the tables of a finished run in OUT and write report.json (and timeline.png)."""
    from scenario.report import report_json, summarize, table

    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError) as e:
        raise click.ClickException(f"{out}: no readable results.json ({e})")
    for fn, res in results.items():
        if res.get("runs"):
            click.echo(table(fn, summarize(res["runs"]), res.get("note", "")))
        else:
            click.echo(f"{fn.upper()}: {res.get('note', 'no runs')}")
        click.echo()
    (out / "report.json").write_text(report_json(results))
    if not no_png:
        from scenario.timeline import render
        render(json.loads((out / "timeline.json").read_text()), results, out / "timeline.png")
    click.echo(f"results in {out}/ (report.json{'' if no_png else ', timeline.png'})")


if __name__ == "__main__":
    main()
