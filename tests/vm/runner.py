"""Boot a kernel with virtme-ng and run a pytest tier inside it.

    python -m tests.vm.runner                       # stock Debian kernel, tests marked vm
    python -m tests.vm.runner --kernel bzImage --tier repair
    python -m tests.vm.runner -- -x tests/vm/test_foundation.py   # extra pytest args
    python -m tests.vm.runner --exec -- python -m scenario run     # any command

The guest shares the host's root filesystem (9p), so the project's virtualenv,
CRIU and iproute2 are the host's. One VM per test session: a Python start under
emulation costs seconds (every file lookup crosses 9p), so every test of a tier
runs in one boot, and the project's modules are compiled on the host first.

KVM is used when it works. On some hosts /dev/kvm exists but a KVM guest hangs
or aborts, so the runner boots the kernel once under KVM to a root-fs panic and
uses KVM only if that panic shows up in time; the verdict is cached per machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STOCK_KERNEL_GLOB = "vmlinuz-*-amd64"
CACHE = Path(os.environ.get("CRIU_EXT_CACHE", "/var/cache/criu-ext"))
GUEST_UP = "criu-ext-vm: guest up"
# Loaded at boot; CRIU_EXT_VM_MODULES (space-separated) replaces the list, e.g. to
# leave sctp out and insmod one built elsewhere (a loaded sctp cannot be removed).
MODULES = tuple(os.environ.get("CRIU_EXT_VM_MODULES",
                               "gtp sctp sctp_diag tun veth bridge").split())
TIERS = {"vm": "vm", "repair": "repair"}


class VMError(Exception):
    """The VM could not be started or did not finish: a failure, never a skip."""


def stock_kernel() -> Path:
    """Newest Debian kernel image in /boot (linux-image-amd64)."""
    images = sorted(Path("/boot").glob(STOCK_KERNEL_GLOB))
    if not images:
        raise VMError("no Debian kernel in /boot (vmlinuz-*-amd64): run scripts/setup")
    return images[-1]


def _probe_key(kernel: Path) -> str:
    qemu = shutil.which("qemu-system-x86_64") or ""
    cpu = ""
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line
                break
    text = "|".join([qemu, str(os.stat(qemu).st_mtime) if qemu else "",
                     platform.release(), cpu, str(kernel)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def kvm_works(kernel: Path, timeout: float = 8.0) -> bool:
    """Boot ``kernel`` under KVM to its root-fs panic; True if it gets there in time.

    Under software emulation the same boot takes about 5 s; under a working KVM
    well under 2 s. A host whose KVM is broken either aborts qemu at once or
    hangs the guest, and both read as "no".
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    cached = CACHE / f"kvm-probe-{_probe_key(kernel)}"
    if cached.exists():
        return cached.read_text().strip() == "yes"
    cmd = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256",
           "-display", "none", "-nodefaults", "-no-reboot", "-serial", "stdio",
           "-kernel", str(kernel),
           "-append", "console=ttyS0 panic=-1 loglevel=1 root=/dev/nonexistent"]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=timeout).stdout
        ok = b"Kernel panic" in out
    except subprocess.TimeoutExpired:
        ok = False
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        cached.write_text("yes\n" if ok else "no\n")
    except OSError:
        pass
    return ok


def pytest_command(tier: str, pytest_args: list[str], junit: Path | None) -> list[str]:
    args = ["-m", TIERS[tier]] + (pytest_args or ["tests"])
    if junit is not None:
        args += [f"--junitxml={junit}"]
    return [str(REPO / ".venv/bin/python"), "-m", "pytest"] + args


def stage_kernel_files(kernel: Path) -> Path | None:
    """Copy the headers and selftests that kernel-patches/build.sh keeps beside
    ``kernel`` to ``out/kernel-files`` in the repository, or None if it has none.

    The guest sees the repository, but not the kernel cache: virtme-ng mounts
    a tmpfs over /var/cache.
    """
    src = kernel.parent
    if not (src / "selftests").is_dir():
        return None
    dest = REPO / "out" / "kernel-files"
    shutil.rmtree(dest, ignore_errors=True)
    for part in ("selftests", "usr"):
        if (src / part).is_dir():
            shutil.copytree(src / part, dest / part)
    return dest


# the project's own Python packages; the virtualenv's were compiled when pip installed them
SOURCES = ("procns", "gtp_util", "sctp_repair", "criu_ext", "lab", "scenario", "benchmarks",
           "tests")


def precompile() -> None:
    """Write the project's ``.pyc`` files on the host before the guest starts.

    The guest runs with PYTHONDONTWRITEBYTECODE (it must not leave root-owned
    caches in the tree), so a module without a ``.pyc`` is compiled again in every
    process that imports it: under emulation, a second or more per process. The
    ``.pyc`` files are checked against their source's mtime, so a stale one is
    never used. A failure here (a syntax error) is left for pytest to report.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                    *[str(REPO / d) for d in SOURCES if (REPO / d).is_dir()]],
                   cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


# Read-only directories that every Python start in the guest reads and that do not
# change while a VM runs. virtme-ng mounts the root and the repository without a
# cache, so every file lookup and every .pyc read crosses 9p again in each process
# (under emulation, Python's own start took 1.6 s and criu-ext --help 5.2 s). Each of
# these is exported once more as a read-only 9p share, which the guest mounts over
# the same path with cache=loose: 0.9 s and 2.2 s. Containers in the tests bind
# /usr and the repository non-recursively (lab/podman.py, lab/oci.py): CRIU cannot
# checkpoint a container holding these 9p mounts.
CACHED = (Path("/usr/lib/python3.11"), Path("/usr/lib/python3/dist-packages"),
          Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/bin"), Path("/usr/sbin"),
          REPO / ".venv", *(REPO / d for d in SOURCES))

# qemu's option syntax and the shell command line virtme-ng builds take no more
_SHAREABLE = re.compile(r"[A-Za-z0-9_./+-]+")


def cached_shares() -> list[tuple[str, Path]]:
    """(9p mount tag, host path) of each of CACHED that exists and can be named."""
    return [(f"criu-ext-ro{i}", path) for i, path in enumerate(CACHED)
            if path.is_dir() and _SHAREABLE.fullmatch(str(path))]


def guest_script(command: list[str], kernel: Path | None = None,
                 kernel_files: Path | None = None,
                 shares: list[tuple[str, Path]] | None = None) -> str:
    """The shell script the guest runs: load modules, then ``command`` in the repository.

    ``CRIU_EXT_KERNEL`` tells the tests which image the guest booted;
    ``CRIU_EXT_KERNEL_FILES`` where its headers and selftests are (see
    :func:`stage_kernel_files`), empty for a kernel without them. ``shares``: the
    (tag, path) of each cached share to mount (:func:`cached_shares`).
    """
    mods = " ".join(MODULES)
    mounts = "\n".join(
        f"mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose "
        f"{tag} {shlex.quote(str(path))} || echo 'criu-ext-vm: {tag} not mounted, uncached'"
        for tag, path in shares or [])
    return f"""\
echo "{GUEST_UP} $(uname -r)"
# A kernel built with everything in (the repair-mode kernel) has no modules dir.
if [ -d "/lib/modules/$(uname -r)" ]; then
    for m in {mods}; do
        modprobe -q "$m" || echo "criu-ext-vm: module $m does not load"
    done
fi
{mounts}
cd {shlex.quote(str(REPO))}
# distutils-precedence.pth imports a shim at every start unless told not to
export SETUPTOOLS_USE_DISTUTILS=stdlib
export CRIU_EXT_VM=1 PYTHONDONTWRITEBYTECODE=1 PATH={shlex.quote(str(REPO / '.venv/bin'))}:$PATH
export CRIU_EXT_KERNEL={shlex.quote(str(kernel or ''))}
export CRIU_EXT_KERNEL_FILES={shlex.quote(str(kernel_files or ''))}
{' '.join(map(shlex.quote, command))}
rc=$?
sleep 1  # let the last output cross the virtio console before the guest powers off
exit $rc
"""


def vng_command(kernel: Path, script: Path, *, kvm: bool, memory: str, cpus: int,
                shares: list[tuple[str, Path]] | None = None) -> list[str]:
    vng = shutil.which("vng", path=f"{REPO / '.venv/bin'}:{os.environ.get('PATH', '')}")
    if vng is None:
        raise VMError("virtme-ng (vng) not found: run scripts/setup")
    cmd = [vng, "--run", str(kernel), "--force-9p", "--memory", memory,
           "--cpus", str(cpus), "--rwdir", str(REPO), "--exec", f"sh {script}"]
    if not kvm:
        cmd.insert(3, "--disable-kvm")
    for tag, path in shares or []:
        fsdev = tag.replace("-", "")
        # one word with "=": a value starting with "-" is otherwise taken for an option
        cmd[3:3] = [f"--qemu-opts=-fsdev local,id={fsdev},path={path},security_model=none,"
                    f"readonly=on,multidevs=remap "
                    f"-device virtio-9p-pci,fsdev={fsdev},mount_tag={tag}"]
    return cmd


def run(kernel: Path, command: list[str], *, timeout: float, memory: str = "2G",
        cpus: int = 2, accel: str = "auto", label: str = "") -> int:
    """Run ``command`` in a VM booted from ``kernel``; return its exit status."""
    if not kernel.exists():
        raise VMError(f"kernel image {kernel} does not exist")
    kvm = {"kvm": True, "tcg": False}.get(accel)
    if kvm is None:
        kvm = kvm_works(kernel)
    precompile()
    shares = cached_shares()  # what qemu exports, the guest mounts
    env = dict(os.environ, PATH=f"{REPO / '.venv/bin'}:{os.environ.get('PATH', '')}")
    with tempfile.NamedTemporaryFile("w", prefix="criu-ext-guest-", suffix=".sh",
                                     dir="/tmp", delete=False) as f:
        f.write(guest_script(command, kernel, stage_kernel_files(kernel), shares))
        script = Path(f.name)
    cmd = vng_command(kernel, script, kvm=kvm, memory=memory, cpus=cpus, shares=shares)
    print(f"criu-ext-vm: booting {kernel} ({'KVM' if kvm else 'software emulation'}), "
          f"{label or command[0]}, timeout {timeout:.0f} s", flush=True)
    start = time.monotonic()
    booted = False
    # The VM runs in a session of its own (so a terminal's Ctrl-C reaches only us);
    # make SIGTERM unwind through the finally below too, which kills it.
    signal.signal(signal.SIGTERM, _terminate)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = start + timeout
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), True)
        for raw in _lines_until(proc, deadline):
            line = raw.decode("utf-8", "replace")
            if GUEST_UP in line and not booted:
                booted = True
                print(f"criu-ext-vm: booted in {time.monotonic() - start:.1f} s", flush=True)
            sys.stdout.write(line)
            sys.stdout.flush()
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise VMError(f"VM did not finish within {timeout:.0f} s "
                      f"({'booted' if booted else 'never booted'}); killed") from None
    finally:
        script.unlink(missing_ok=True)
        if proc.poll() is None:
            _kill(proc)
    if not booted:
        raise VMError(f"VM failed to boot {kernel} (exit status {rc}); see the output above")
    return rc


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def _lines_until(proc: subprocess.Popen, deadline: float):
    """Yield output lines; raise TimeoutExpired when the deadline passes."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, 0)
        if not sel.select(timeout=min(left, 5.0)):
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            if buf:
                yield buf
            return
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line + b"\n"


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.vm.runner",
        description="Run a pytest tier inside a virtme-ng VM (one boot for the whole session).")
    parser.add_argument("--kernel", type=Path, help="kernel image to boot "
                        "(default: the newest Debian vmlinuz in /boot)")
    parser.add_argument("--tier", choices=sorted(TIERS), default="vm",
                        help="pytest marker to run (default: vm)")
    parser.add_argument("--timeout", type=float, default=2400.0,
                        help="seconds before the VM is killed (default: 2400)")
    parser.add_argument("--memory", default="2G", help="guest memory (default: 2G)")
    parser.add_argument("--cpus", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                        help="auto probes KVM and falls back to emulation (default)")
    parser.add_argument("--junit", type=Path, help="write pytest's JUnit XML here")
    parser.add_argument("--exec", dest="command", action="store_true",
                        help="run the arguments after -- as a command in the guest "
                             "instead of pytest")
    parser.add_argument("args", nargs="*", help="after --: pytest arguments, or the "
                        "command with --exec")
    args = parser.parse_args(argv)
    if args.command:
        if not args.args:
            parser.error("--exec needs a command after --")
        command, label = args.args, "command"
    else:
        command, label = pytest_command(args.tier, args.args, args.junit), f"tier {args.tier}"
    try:
        kernel = args.kernel or stock_kernel()
        return run(kernel.resolve(), command, timeout=args.timeout, memory=args.memory,
                   cpus=args.cpus, accel=args.accel, label=label)
    except VMError as e:
        print(f"criu-ext-vm: error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
