"""``criu-ext show DIR``: our images in a CRIU image directory, and a summary of CRIU's.

Exit status 0 when everything could be read, 3 when the manifest or a plugin's
image was refused (not a regular file, too large, malformed): what could be read
is still printed, and each refusal is one line on stderr.
"""

from __future__ import annotations

import json
import os
import sys

import click

from criu_ext.plugin import PluginError, discover, load
from criu_ext.session import read_manifest

BAD_IMAGE = 3


def collect(images_dir: str) -> dict:
    """What ``show`` prints; ``errors`` lists the files that were refused, one line each."""
    errors: list[str] = []
    try:
        manifest = read_manifest(images_dir)
    except PluginError as exc:
        manifest = None
        errors.append(str(exc))
    out: dict = {"images_dir": os.path.abspath(images_dir), "manifest": manifest, "plugins": {},
                 "errors": errors}
    names = set()
    if manifest:
        for action in ("dump", "restore"):
            for p in manifest.get(action, {}).get("plugins", []):
                names.add(p["name"])
    for f in os.listdir(images_dir):
        if f.startswith("criu-ext-"):
            names.add(f[len("criu-ext-"):].split(".")[0].split("-")[0])
    refs = {r.name: r for r in discover()}
    for name in sorted(names):
        if name not in refs:
            out["plugins"][name] = {"error": "plugin not installed here"}
            continue
        try:
            out["plugins"][name] = load(refs[name]).show(images_dir)
        except Exception as exc:  # noqa: BLE001 - a broken image must not hide the others
            why = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
            why = " ".join(why.split())  # one line, whatever the image held
            out["plugins"][name] = {"error": why}
            errors.append(f"plugin {name}: {why}")
    try:
        from criu_ext.criu_images import summary

        out["criu"] = summary(images_dir)
    except ImportError as exc:
        out["criu"] = {"error": f"pycriu not available: {exc}"}
    return out


def _text(data: dict) -> str:
    lines = [f"image directory {data['images_dir']}"]
    m = data["manifest"]
    if m:
        for action in ("dump", "restore"):
            rec = m.get(action)
            if not rec:
                continue
            tot = sum(t["seconds"] for t in rec.get("timings", []))
            lines.append(f"{action} ({rec.get('mode')} mode, root PID {rec.get('init_pid')}): "
                         f"plugins {', '.join(p['name'] for p in rec.get('plugins', [])) or '-'}, "
                         f"{tot * 1000:.1f} ms in plugins"
                         + (", rolled back on the source" if rec.get("rolled_back") else ""))
            for t in rec.get("timings", []):
                lines.append(f"  {t['phase']:<22} {t['plugin']:<10} {t['seconds'] * 1000:9.1f} ms"
                             f"{'' if t['ok'] else '  FAILED'}")
    else:
        lines.append("no criu-ext.json: no criu-ext plugin acted on this directory")
    for name, shown in data["plugins"].items():
        lines.append(f"plugin {name}:")
        if shown is None:
            lines.append("  (nothing to show)")
        elif isinstance(shown, dict) and "text" in shown:
            lines += ["  " + ln for ln in shown["text"].splitlines()]
        else:
            lines += ["  " + ln for ln in json.dumps(shown, indent=1, default=str).splitlines()]
    c = data.get("criu", {})
    lines.append(f"CRIU: {c.get('images', 0)} images, {c.get('bytes', 0)} bytes")
    if c.get("error"):
        lines.append(f"  {c['error']}")
    for t in c.get("tasks", []):
        lines.append(f"  task {t['pid']} (parent {t['ppid']}) {t['comm']}, {t['threads']} thread(s)")
    if c.get("links"):
        lines.append("  links: " + ", ".join(str(ln["name"]) for ln in c["links"]))
    for kind, st in c.get("stats", {}).items():
        keys = ("freezing_time", "frozen_time", "memdump_time", "memwrite_time") \
            if kind == "dump" else ("forking_time", "restore_time")
        lines.append(f"  {kind} stats: " + ", ".join(f"{k} {st[k] / 1000:.1f} ms" for k in keys
                                                     if k in st))
    return "\n".join(lines)


@click.command()
@click.argument("images_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def show(images_dir, as_json):
    """Show what criu-ext plugins stored in IMAGES_DIR, and a summary of CRIU's images.

    Exit status 3 (after printing what could be read) when the manifest or a
    plugin's image was refused: a link, not a regular file, too large, malformed.
    """
    data = collect(images_dir)
    click.echo(json.dumps(data, indent=1, default=str) if as_json else _text(data))
    for err in data["errors"]:
        click.echo(f"criu-ext show: {err}", err=True)
    if data["errors"]:
        sys.exit(BAD_IMAGE)
