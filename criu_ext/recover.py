"""Put the source back after a dump whose criu-ext process died (``criu-ext recover``).

A journal (criu_ext.journal) whose writer is gone says which plugins acted on the
source and what they recorded. When criu-ext dies, the CRIU it started fails at
its next notification and lets the tree run again (its own network lock undone),
so what is left to undo is the plugins' work: gtp devices removed at network-lock,
SCTP sockets swapped out and their peers fenced. Recovery waits for that CRIU to
end, then runs the plugins' ``rollback`` with the journaled state, as a failed dump
would have. Outcomes, per journal:

* the writer still runs: the dump is in progress, left alone;
* the tree is gone: the dump completed (its images are whole) or the tree ended;
  nothing to put back, the journal is removed;
* the migration was committed to a destination (``criu-ext migrate`` journals that
  before it sends ``commit``): the tree belongs to the destination, and the source
  must not run on (CRIU let it run again when criu-ext died): the source tree is
  killed, as a successful dump would have (never both running; if the destination
  missed the commit, neither runs, as when the connection drops then);
* otherwise: rollback; the journal is removed only when every plugin succeeded
  (run again after fixing what a failure names).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from criu_ext.journal import Entry
from criu_ext.plugin import Log, PluginError
from criu_ext.session import Session

HANDOFF = "migrate-handoff"  # criu_ext.migrate.source.Handoff: not a plugin to load again


@dataclass
class Outcome:
    path: str
    status: str  # "running", "recovered", "nothing", "failed"
    message: str

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def _wait_criu(e: Entry, wait: float) -> bool:
    """True once the CRIU of that dump is gone (or was never started)."""
    end = time.monotonic() + wait
    while e.criu is not None and e.criu.running():
        if time.monotonic() >= end:
            return False
        time.sleep(0.1)
    return True


def _committed(e: Entry, what: str, wait: float, dry_run: bool) -> Outcome:
    """The tree was handed to the destination: end what runs of it here."""
    from criu_ext import tasks

    if not e.root.running():
        if not dry_run:
            e.remove()
        return Outcome(e.path, "nothing", f"{what}: committed to the destination; the source "
                       "tree is gone, nothing to do")
    if dry_run:
        return Outcome(e.path, "recovered", f"{what}: committed to the destination: would kill "
                       f"the source tree (PID {e.root.pid}), which must not run on here")
    if not _wait_criu(e, wait):
        return Outcome(e.path, "failed", f"{what}: its CRIU still runs after {wait:.0f} s; "
                       "run criu-ext recover again once it ended")
    pids = tasks.tree(e.root.pid) if e.root.running() else []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    e.remove()
    return Outcome(e.path, "recovered",
                   f"{what}: committed to the destination, where the tree runs; the source "
                   f"tree ({len(pids)} task(s)), which CRIU let run again, was killed")


def _unswitch(handoff: dict, root: int, handed: bool) -> str | None:
    """A migration killed before its commit: a staged one's (``criu-ext migrate
    --stage``) outer links back on their bridges, the GTP-U pass through CRIU's lock
    gone; the addresses announced from here again if the links were off or the images
    may have reached the destination (``handed``: the dump got to post-dump, whose
    handoff asks for the restore; switch.reclaim says why). Returns what failed, or None."""
    from criu_ext.migrate import switch

    try:
        links = handoff.get("links") or {}  # journaled before the freeze, maybe not off yet
        if not isinstance(links, dict):
            return "malformed journal: switch links"
        for name, bridge in links.items():
            if not isinstance(name, str) or not (bridge is None or isinstance(bridge, str)):
                return "malformed journal: switch links"
        if links:
            switch.restore(links)
        if handoff.get("staged"):
            switch.close_pass(f"/proc/{root}/ns/net")
    except switch.SwitchError as exc:
        return f"could not undo the switch: {exc}"
    if links or handed:
        try:
            switch.reclaim(root)
        except OSError as exc:
            return f"the source runs on, but its addresses were not announced: {exc}"
    return None


def recover(e: Entry, log: Log, wait: float = 30.0, dry_run: bool = False) -> Outcome:
    what = f"dump of PID {e.root.pid} (criu-ext PID {e.owner.pid})"
    if e.owner.running():
        return Outcome(e.path, "running", f"{what}: still in progress, left alone")
    handoff = e.session.get("state", {}).get(HANDOFF, {})
    if "committing" in e.marks or (isinstance(handoff, dict) and handoff.get("committing")):
        return _committed(e, what, wait, dry_run)
    if not e.root.running():
        if not dry_run:
            e.remove()
        done = "post-dump" in e.phases
        return Outcome(e.path, "nothing",
                       f"{what}: the tree is gone ("
                       + ("the dump reached post-dump: its images are whole" if done
                          else "it ended during the dump") + "); nothing to put back")
    if not _wait_criu(e, wait):
        return Outcome(e.path, "failed", f"{what}: its CRIU (PID {e.criu.pid if e.criu else '?'}) "
                       f"still runs after {wait:.0f} s; run criu-ext recover again once it ended")
    if isinstance(handoff, dict) and not dry_run:
        migrating = any(p.get("name") == HANDOFF for p in e.session.get("plugins", [])
                        if isinstance(p, dict))
        problem = _unswitch(handoff, e.root.pid, migrating and "post-dump" in e.phases)
        if problem:
            return Outcome(e.path, "failed", f"{what}: {problem} (journal kept: {e.path})")
    data = dict(e.session, plugins=[p for p in e.session["plugins"] if p["name"] != HANDOFF])
    try:
        session = Session.from_json(data, log)
    except PluginError as exc:
        return Outcome(e.path, "failed", f"{what}: {exc}")
    acted = [name for name in session.acted if name != HANDOFF]
    if session.rolled_back or not acted:
        if not dry_run:
            e.remove()
        why = "already rolled back" if session.rolled_back else "no plugin had acted yet"
        return Outcome(e.path, "nothing", f"{what}: {why}; nothing to put back")
    if dry_run:
        return Outcome(e.path, "recovered",
                       f"{what}: would roll back {', '.join(reversed(acted))} "
                       f"(phases seen: {', '.join(e.phases) or 'none'})")
    errors = session.rollback()
    if errors:
        return Outcome(e.path, "failed", f"{what}: rollback failed: "
                       + "; ".join(str(err) for err in errors) + f" (journal kept: {e.path})")
    e.remove()
    return Outcome(e.path, "recovered",
                   f"{what}: rolled back {', '.join(reversed(acted))} on the source "
                   f"(it had reached {e.phases[-1] if e.phases else 'no phase'})")
