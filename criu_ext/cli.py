"""The ``criu-ext`` command: a thin click group; each subcommand lives in its own module.

Subcommand modules are imported lazily so ``criu-ext --help`` and the action
script stay cheap to start (Python start-up counts inside CRIU's freeze window).
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command
COMMANDS = {
    "check": "criu_ext.check_cmd:check",
    "dump": "criu_ext.dump_cmd:dump",
    "restore": "criu_ext.restore_cmd:restore",
    "plugins": "criu_ext.plugins_cmd:plugins",
    "show": "criu_ext.show_cmd:show",
    "hook-script": "criu_ext.hook_script_cmd:hook_script",
    "migrate": "criu_ext.migrate_cmd:migrate",
    "receive": "criu_ext.migrate_cmd:receive",
    "recover": "criu_ext.recover_cmd:recover",
    "tls-init": "criu_ext.migrate_cmd:tls_init",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Live migration of mobile-core network functions with stock CRIU.

    Start with `criu-ext check`: it says whether this machine can run the toolkit.
    """
