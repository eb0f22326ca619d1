"""What ``criu-ext dump`` and ``criu-ext restore`` share: CRIU options, plugin set-up, output."""

from __future__ import annotations

import json
import os
import sys

import click

from criu_ext.plugin import Log, PluginError, select


def criu_options(f):
    """The CRIU options both commands take (applied bottom-up)."""
    opts = [
        click.option("-D", "--images-dir", required=True,
                     type=click.Path(file_okay=False, exists=True, writable=True),
                     help="CRIU image directory"),
        click.option("--shell-job", is_flag=True, help="CRIU --shell-job"),
        click.option("--tcp-established", is_flag=True, help="CRIU --tcp-established"),
        click.option("--external", multiple=True, metavar="RES",
                     help="CRIU --external, e.g. 'veth[eth0]:gw-b@br-b' (repeatable)"),
        click.option("-o", "--log-file", metavar="PATH",
                     help="CRIU's log: a name in the image directory or a path "
                          "(default: dump.log / restore.log in the image directory)"),
        click.option("-v", "--log-level", type=click.IntRange(0, 4), default=2, show_default=True,
                     help="CRIU's log level"),
        click.option("--config-file", type=click.Path(dir_okay=False, exists=True),
                     help="CRIU configuration file (must not name an action-script: "
                          "CRIU 3.17 cannot mix them with RPC notify)"),
        click.option("--opt", "extra", multiple=True, metavar="NAME=VALUE",
                     help="any other criu_opts field of rpc.proto, e.g. ext_unix_sk=true "
                          "(repeatable; repeated fields take one value each time)"),
        click.option("--plugins", "plugin_spec", envvar="CRIU_EXT_PLUGINS", metavar="SPEC",
                     help="plugins to run: names, -name to exclude, module:attr to add "
                          "(default: every default plugin; env CRIU_EXT_PLUGINS)"),
        click.option("--criu", "criu_bin", default="criu", show_default=True, envvar="CRIU",
                     help="the criu binary"),
        click.option("--json", "as_json", is_flag=True, help="print the result as JSON"),
        click.option("-q", "--quiet", is_flag=True, help="plugin messages: errors only"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def parse_extra(items) -> dict:
    extra: dict = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--opt")
        extra.setdefault(name.strip().replace("-", "_"), []).append(value)
    return {k: (v if len(v) > 1 else v[0]) for k, v in extra.items()}


def load_plugins(spec: str | None, quiet: bool):
    log = Log(sys.stderr, 1 if quiet else 3)
    try:
        return select(spec, log), log
    except PluginError as exc:
        raise click.ClickException(str(exc)) from exc


def report(action: str, result, session, images_dir: str, as_json: bool, extra: dict) -> None:
    from criu_ext import phases as ph
    from criu_ext.criu_images import stats

    st = stats(images_dir).get(action, {})
    frozen_plugin = session.plugin_seconds(ph.FROZEN)
    data = {
        "action": action, "ok": result.ok, "seconds": round(result.seconds, 6),
        "plugins": [p.name for p in session.plugins],
        "plugin_seconds": round(session.plugin_seconds(), 6),
        "plugin_seconds_frozen": round(frozen_plugin, 6),
        "notify": result.notify, "timings": session.timings, "criu_stats": st,
        "log": result.log_path, **extra,
    }
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    parts = [f"{action} done in {result.seconds:.3f} s"]
    if action == "dump" and st.get("frozen_time"):
        parts.append(f"tasks frozen {st['frozen_time'] / 1e6:.3f} s")
    if action == "restore" and st.get("restore_time"):
        parts.append(f"CRIU restore {st['restore_time'] / 1e6:.3f} s")
    parts.append(f"plugins {frozen_plugin * 1000:.1f} ms while frozen")
    click.echo(", ".join(parts) + (f"; restored PID {extra['pid']}" if "pid" in extra else ""))


def fail(exc) -> None:
    raise click.ClickException(str(exc))


def images_dir_abs(path: str) -> str:
    return os.path.abspath(path)
