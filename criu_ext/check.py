"""Environment report: can this machine run the toolkit, and if not, what is missing.

Each probe returns a :class:`Finding`. Probes that create things (a gtp link, an
SCTP socket, a sock_diag request) run in a forked child inside a scratch network
namespace, so the caller's namespace is never touched. Verdict and formatting
are pure functions of the findings.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import socket
import struct
import subprocess

from procns.caps import CAP_NET_ADMIN, has_cap
from procns.fds import steal_fd
from procns.syscalls import CLONE_NEWNET, unshare

IPPROTO_SCTP = 132
NETLINK_SOCK_DIAG = 4


@dataclasses.dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str
    required: bool = True
    # What to do about it; shown only when the finding is not ok.
    hint: str = ""


# --- probes that run in the caller's context --------------------------------------------


def probe_kernel() -> Finding:
    u = os.uname()
    return Finding("kernel", True, f"{u.sysname} {u.release} {u.machine}")


def probe_cap_net_admin() -> Finding:
    ok = has_cap(CAP_NET_ADMIN)
    return Finding("CAP_NET_ADMIN", ok, "yes" if ok else "no",
                   hint="run as root: gtp devices, PDP contexts and CRIU need it")


def probe_pidfd_getfd() -> Finding:
    """Take a copy of one of our own fds through a pidfd, as restores do with a task's."""
    r, w = os.pipe()
    try:
        copy = steal_fd(os.getpid(), r)
    except OSError as e:
        hint = ("kernel older than 5.6" if e.errno == errno.ENOSYS
                else "ptrace permission over the task is needed (root, or CAP_SYS_PTRACE)")
        return Finding("pidfd_getfd", False, e.strerror or str(e), hint=hint)
    finally:
        os.close(r)
        os.close(w)
    os.close(copy)
    return Finding("pidfd_getfd", True, "usable")


def probe_criu() -> list[Finding]:
    path = shutil.which("criu") or next(
        (p for p in ("/usr/sbin/criu", "/sbin/criu") if os.access(p, os.X_OK)), None)
    if path is None:
        return [Finding("criu", False, "not found", hint="apt-get install criu"),
                Finding("criu check", False, "not run: no criu")]
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
        m = re.search(r"Version:\s*(\S+)", version)
        found = Finding("criu", True, f"{path} {m.group(1) if m else version.strip()}")
        res = subprocess.run([path, "check"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [Finding("criu", False, f"{path}: {e}"), Finding("criu check", False, "not run")]
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    if res.returncode == 0:
        return [found, Finding("criu check", True, lines[-1] if lines else "passed")]
    errors = [line for line in lines if "Error" in line or "fail" in line.lower()]
    why = (errors or lines or [f"exit status {res.returncode}"])[0].strip()
    return [found, Finding("criu check", False, why[:120],
                           hint="CRIU cannot checkpoint on this kernel; use the test VM")]


# --- probes that run in a scratch network namespace ---------------------------------------


def _probe_gtp() -> Finding:
    """Create a gtp link bound to a UDP socket on 2152, as a gateway does, then delete it."""
    from pyroute2.iproute.linux import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    from gtp_util.netlink import register_link_kind

    register_link_kind()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 2152))
        with IPRoute() as ipr:
            ipr.link("add", ifname="cxcheck0", kind="gtp", fd1=sock.fileno(), role=0)
            ipr.link("del", ifname="cxcheck0")
    except NetlinkError as e:
        hint = ("kernel without CONFIG_GTP (or the gtp module cannot load)"
                if e.code in (errno.EOPNOTSUPP, errno.ENOENT) else "")
        return Finding("gtp", False, f"cannot create a gtp link: {os.strerror(e.code)}",
                       hint=hint)
    finally:
        sock.close()
    return Finding("gtp", True, "gtp link created and deleted in a scratch netns")


def _sctp_socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_SCTP)


def _probe_sctp() -> Finding:
    try:
        _sctp_socket().close()
    except OSError as e:
        return Finding("sctp", False, f"no SCTP sockets: {e.strerror}",
                       hint="kernel without CONFIG_IP_SCTP (or the sctp module cannot load)")
    return Finding("sctp", True, "SCTP sockets open")


def _probe_sctp_diag() -> Finding:
    """Ask sock_diag for SCTP sockets; a dump ending in -ENOENT means no sctp_diag.

    The request is pyroute2's declared ``inet_diag_req``; the answer is read by
    hand because pyroute2 0.9 drops the error code that NLMSG_DONE carries,
    which is the whole answer here.
    """
    from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
    from pyroute2.netlink.diag import SOCK_DIAG_BY_FAMILY, inet_diag_req

    req = inet_diag_req()
    req["header"]["type"] = SOCK_DIAG_BY_FAMILY
    req["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    req["header"]["sequence_number"] = 1
    req["sdiag_family"] = socket.AF_INET
    req["sdiag_protocol"] = IPPROTO_SCTP
    req["idiag_states"] = 0xFFFFFFFF
    req.encode()
    err = 0
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
        s.settimeout(5)
        s.send(req.data)
        done = False
        while not done:
            data = s.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("<IH", data, off)
                if kind in (NLMSG_DONE, NLMSG_ERROR):
                    (err,) = struct.unpack_from("<i", data, off + 16)
                    done = True
                    break
                off += (length + 3) & ~3
    if err:
        return Finding("sctp_diag", False, f"sock_diag for SCTP: {os.strerror(-err)}",
                       required=False, hint="CONFIG_INET_SCTP_DIAG: needed to list associations")
    return Finding("sctp_diag", True, "sock_diag answers for SCTP", required=False)


def _probe_sctp_repair() -> Finding:
    from sctp_repair import probe as repair_probe

    found = repair_probe()
    return Finding("sctp repair mode", found.repair, found.detail, required=False,
                   hint="associations can only be carried by an SCTP restart; "
                        "boot a kernel with kernel-patches/ applied for a seamless move")


SCRATCH_PROBES = (_probe_gtp, _probe_sctp, _probe_sctp_diag, _probe_sctp_repair)


def probe_in_scratch_netns() -> list[Finding]:
    """Run the probes that create things in a forked child inside a new netns."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        os.close(r)
        try:
            unshare(CLONE_NEWNET)
            found = []
            for probe in SCRATCH_PROBES:
                try:
                    found.append(dataclasses.asdict(probe()))
                except Exception as e:  # a probe's bug must not hide the others
                    name = probe.__name__.removeprefix("_probe_").replace("_", " ")
                    found.append(dataclasses.asdict(Finding(name, False, f"probe failed: {e}")))
            payload = json.dumps(found)
        except OSError as e:
            payload = json.dumps({"error": e.strerror or str(e)})
        with os.fdopen(w, "w") as f:
            f.write(payload)
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        payload = json.loads(f.read() or '{"error": "probe process died"}')
    os.waitpid(pid, 0)
    if isinstance(payload, dict):
        why = payload["error"]
        return [Finding("scratch netns", False, f"cannot create one: {why}",
                        hint="run as root; gtp and SCTP were not probed")]
    return [Finding(**f) for f in payload]


def run_all() -> list[Finding]:
    return ([probe_kernel(), probe_cap_net_admin()] + probe_in_scratch_netns()
            + [probe_pidfd_getfd()] + probe_criu())


# --- verdict and formatting (pure) -------------------------------------------------------


def usable(findings: list[Finding]) -> bool:
    return all(f.ok for f in findings if f.required)


def missing(findings: list[Finding]) -> list[str]:
    return [f.name for f in findings if f.required and not f.ok]


def as_json(findings: list[Finding]) -> str:
    return json.dumps({"usable": usable(findings), "missing": missing(findings),
                       "findings": [dataclasses.asdict(f) for f in findings]}, indent=2)


def as_table(findings: list[Finding]) -> str:
    width = max(len(f.name) for f in findings)
    lines = []
    for f in findings:
        mark = "ok" if f.ok else ("MISSING" if f.required else "absent")
        line = f"  {f.name:<{width}}  {mark:<7}  {f.detail}"
        if not f.ok and f.hint:
            line += f"\n  {'':<{width}}  {'':<7}  -> {f.hint}"
        lines.append(line)
    if usable(findings):
        optional = [f.name for f in findings if not f.required and not f.ok]
        verdict = "usable: the toolkit can work here"
        if optional:
            verdict += f" (without: {', '.join(optional)})"
    else:
        verdict = f"NOT usable here: missing {', '.join(missing(findings))}"
    return "\n".join(lines + ["", verdict])
