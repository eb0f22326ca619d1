"""``--dry-run``: what each end must have for this migration. Changes nothing (the
probes of ``criu-ext check`` work in a scratch network namespace)."""

from __future__ import annotations

import subprocess

from criu_ext.check import Finding, run_all
from criu_ext.plugin import Log, PluginError, select


def tree_needs(pid: int) -> list[str]:
    """Kernel features the tree rooted at ``pid`` needs on both ends, as check names:
    ``gtp`` when its netns holds a gtp link, ``sctp repair mode`` when it has SCTP
    associations (established ones move only with repair mode)."""
    needs = []
    res = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", "ip", "-o", "link",
                          "show", "type", "gtp"], capture_output=True, text=True)
    if res.returncode == 0 and res.stdout.strip():
        needs.append("gtp")
    try:
        with open(f"/proc/{pid}/net/sctp/assocs", encoding="ascii") as f:
            if len(f.read().splitlines()) > 1:
                needs += ["sctp", "sctp repair mode"]
    except FileNotFoundError:
        pass
    return needs


def evaluate(findings: list[Finding], needs: list[str], plugin_spec: str | None) -> dict:
    """Verdict for one end: the toolkit's required findings, plus those the tree needs."""
    problems = [f"{f.name}: {f.detail}" for f in findings
                if not f.ok and (f.required or f.name in needs)]
    have = {f.name for f in findings}
    problems += [f"{n}: not probed here" for n in needs if n not in have]
    try:
        plugins = [p.name for p in select(plugin_spec, Log(open("/dev/null", "w"), 1))]
    except PluginError as exc:
        plugins = []
        problems.append(f"plugins: {exc}")
    return {"ok": not problems, "problems": problems, "needs": needs, "plugins": plugins,
            "findings": {f.name: f.ok for f in findings}}


def check_end(needs: list[str], plugin_spec: str | None) -> dict:
    return evaluate(run_all(), needs, plugin_spec)
