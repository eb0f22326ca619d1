"""A criu_ext plugin for tests that holds CRIU in network-lock and post-restore for
$SLOW_PLUGIN_SECONDS (default 3), so a test can kill CRIU while a phase is running.
Select it with CRIU_EXT_PLUGINS=trace,/path/slow_plugin.py:SlowPlugin."""

from __future__ import annotations

import os
import time


class SlowPlugin:
    name = "slow"
    order = 950  # after trace (900): the trace shows the phase has begun

    def _wait(self, ctx) -> None:
        seconds = float(os.environ.get("SLOW_PLUGIN_SECONDS", "3"))
        ctx.log.info(f"{ctx.phase}: holding CRIU for {seconds} s")
        time.sleep(seconds)

    network_lock = _wait
    post_restore = _wait
