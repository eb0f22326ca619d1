"""``criu-ext plugins``: the plugins this installation knows, in the order they run."""

from __future__ import annotations

import json

import click

from criu_ext.plugin import NOT_DEFAULT, PluginError, discover, load, plugin_phases


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def plugins(as_json):
    """List built-in and entry-point plugins: order, phases, images, origin."""
    rows: list[dict] = []
    for ref in discover():
        try:
            p = load(ref)
        except PluginError as exc:
            rows.append({"name": ref.name, "source": ref.source, "target": ref.target,
                         "error": str(exc), "order": None})
            continue
        rows.append({"name": p.name, "order": getattr(p, "order", 500), "source": ref.source,
                     "target": ref.target, "default": ref.name not in NOT_DEFAULT
                     and getattr(p, "default", True),
                     "phases": plugin_phases(p), "rollback": callable(getattr(p, "rollback", None)),
                     "images": list(getattr(p, "images", ())),
                     "summary": getattr(p, "summary", "")})
    rows.sort(key=lambda r: (r["order"] is None, r["order"] or 0, r["name"]))
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        if "error" in r:
            click.echo(f"{r['name']:<10} BROKEN  {r['error']}")
            continue
        flag = "" if r["default"] else " (off unless selected)"
        click.echo(f"{r['order']:>4} {r['name']:<10} {r['summary']}{flag}")
        click.echo(f"     {'':<10} phases: {', '.join(r['phases']) or '-'}"
                   f"{'; rollback' if r['rollback'] else ''}")
        if r["images"]:
            click.echo(f"     {'':<10} images: {', '.join(r['images'])}")
        click.echo(f"     {'':<10} from: {r['source']} ({r['target']})")
