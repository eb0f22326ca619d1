#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only
# Build the SCTP repair-mode test kernel: Debian's linux-source-6.1, the patch
# series in this directory, virtme-ng's minimal config plus config.fragment.
#
# Usage: kernel-patches/build.sh [-j JOBS] [--force] [--print-key] [-v]
#
# The bzImage is cached at $CACHE/kernel/<key>/bzImage, where key is a hash of
# the kernel source, the patches (in series order), the config fragment,
# RECIPE below and virtme-ng's version; a second run with the same key prints
# the path at once; --print-key prints the key and stops. The build tree
# ($CACHE/build/linux-6.1) is kept between runs, so a change to the series
# rebuilds only what it touches.
#
# Beside it: usr/include (the kernel's uapi headers, make headers_install) and
# selftests/ (the series' kselftest sources with the harness), so that a test
# of this kernel compiles against exactly its headers.
#
# Progress goes to stderr; the last line on stdout is the bzImage path.
# CACHE is $CRIU_EXT_CACHE, by default /var/cache/criu-ext.
# Needs: scripts/setup --kernel-build (build tools, linux-source-6.1, vng).
set -euo pipefail

# Bump when a change to this script changes what it builds.
RECIPE=2

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cache=${CRIU_EXT_CACHE:-/var/cache/criu-ext}
tarball=${LINUX_SOURCE_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
tree="$cache/build/linux-6.1"
jobs=$(nproc)
force=0
verbose=0
print_key=0

while [ $# -gt 0 ]; do
    case "$1" in
    -j) jobs=$2; shift ;;
    -j*) jobs=${1#-j} ;;
    --force) force=1 ;;
    --print-key) print_key=1 ;;
    -v | --verbose) verbose=1 ;;
    -h | --help) awk 'NR > 2 && /^#/ { sub(/^# ?/, ""); print; next } NR > 2 { exit }' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "build.sh: $*" >&2; }
die() { say "$*"; exit 1; }

[ -r "$tarball" ] || die "$tarball is missing: run scripts/setup --kernel-build"
PATH="$top/.venv/bin:$PATH"
command -v vng >/dev/null || die "virtme-ng (vng) not found: run scripts/setup"

mapfile -t patches < <(grep -v '^\s*\(#\|$\)' "$here/series")
for p in "${patches[@]}"; do
    [ -r "$here/$p" ] || die "series names $p, which is not in $here"
done

# The cache key. The tarball is identified by the Debian package version
# that installed it, or by its hash when it came from elsewhere.
src_id=$(dpkg-query -W -f='${Package} ${Version}' linux-source-6.1 2>/dev/null ||
    sha256sum "$tarball" | cut -d' ' -f1)
key=$({
    echo "source $src_id"
    for p in "${patches[@]}"; do echo "patch $p"; cat "$here/$p"; done
    echo "fragment"; cat "$here/config.fragment"
    echo "recipe $RECIPE"
    echo "vng $(vng --version 2>/dev/null)"
} | sha256sum | cut -c1-16)
out="$cache/kernel/$key"
if [ "$print_key" = 1 ]; then
    echo "$key"
    exit 0
fi

if [ "$force" = 0 ] && [ -s "$out/bzImage" ]; then
    say "cached: $out/bzImage"
    echo "$out/bzImage"
    exit 0
fi

mkdir -p "$cache/build" "$cache/kernel"
exec 9>"$cache/build/.lock"
flock 9 || die "cannot lock $cache/build/.lock"

gitq() { git -C "$tree" -c user.name=build.sh -c user.email=build.sh@localhost "$@"; }

# 1. Source tree: extracted once, a git repository whose "base" tag is the
#    pristine source; resetting to it touches only the files the old series
#    changed, which keeps rebuilds incremental.
if [ ! -f "$tree/.git/criu-ext-source" ] || [ "$(cat "$tree/.git/criu-ext-source")" != "$src_id" ]; then
    say "extracting $tarball to $tree"
    rm -rf "$tree"
    mkdir -p "$tree"
    tar -xJf "$tarball" -C "$tree" --strip-components=1
    # Debian's .gitignore ignores every top-level entry; drop that rule so
    # that files a patch adds are seen (and cleaned) like in a kernel tree.
    sed -i '/^# Debian packaging: ignore everything/,/^!\/debian\/$/d' "$tree/.gitignore"
    gitq init -q
    gitq add -A
    gitq commit -q -m "linux-source $src_id"
    gitq tag base
    echo "$src_id" >"$tree/.git/criu-ext-source"
fi

# 2. The series, in order; left alone if the tree already holds exactly it
#    (so that a change of key alone does not touch a single source file).
series_id=$(for p in "${patches[@]}"; do cat "$here/$p"; done | sha256sum | cut -d' ' -f1)
if [ "$(cat "$tree/.git/criu-ext-series" 2>/dev/null)" = "$series_id" ] &&
    gitq diff --quiet HEAD && [ -z "$(gitq ls-files --others --exclude-standard)" ]; then
    say "the series is already applied"
else
    say "applying ${#patches[@]} patches"
    rm -f "$tree/.git/criu-ext-series"
    gitq am --abort >/dev/null 2>&1 || true
    gitq reset -q --hard base
    gitq clean -q -fd
    for p in "${patches[@]}"; do
        gitq am -q "$here/$p" || die "patch $p does not apply to $src_id"
    done
    echo "$series_id" >"$tree/.git/criu-ext-series"
fi

# 3. Config: virtme-ng's minimal one, the fragment on top, then check that
#    nothing the fragment asks for was dropped for want of a dependency.
say "configuring"
(cd "$tree" && vng --kconfig >/dev/null 2>&1) || die "vng --kconfig failed in $tree"
(cd "$tree" && scripts/kconfig/merge_config.sh -m .config "$here/config.fragment" >/dev/null &&
    make olddefconfig >/dev/null) || die "merging config.fragment failed"
missing=()
while read -r line; do
    case "$line" in
    CONFIG_*=*) grep -qxF "$line" "$tree/.config" || missing+=("$line") ;;
    "# CONFIG_"*" is not set")
        opt=${line#\# }
        opt=${opt%% *}
        grep -q "^$opt=" "$tree/.config" && missing+=("$line") ;;
    esac
done <"$here/config.fragment"
if [ "${#missing[@]}" -gt 0 ]; then
    say "the final .config lacks what config.fragment asks for (missing dependencies?):"
    printf '    %s\n' "${missing[@]}" >&2
    exit 1
fi

# 4. Build.
log="$cache/build/make.log"
say "make -j$jobs bzImage (log: $log)"
start=$(date +%s)
if [ "$verbose" = 1 ]; then
    (cd "$tree" && nice -n 10 make -j"$jobs" bzImage 2>&1 | tee "$log" >&2) ||
        die "the kernel build failed"
elif ! (cd "$tree" && nice -n 10 make -j"$jobs" bzImage >"$log" 2>&1); then
    tail -n 40 "$log" >&2
    die "the kernel build failed (full log: $log)"
fi
say "built in $(($(date +%s) - start)) s"

rm -rf "$out.tmp"
mkdir -p "$out.tmp"
cp "$tree/arch/x86/boot/bzImage" "$tree/.config" "$out.tmp/"
(cd "$tree" && make headers_install INSTALL_HDR_PATH="$out.tmp/usr" >/dev/null) ||
    die "make headers_install failed"
selftests=$tree/tools/testing/selftests
mkdir -p "$out.tmp/selftests/net"
cp "$selftests/kselftest_harness.h" "$selftests/kselftest.h" "$out.tmp/selftests/"
for f in "$selftests"/net/sctp_repair*; do
    if [ -e "$f" ]; then cp "$f" "$out.tmp/selftests/net/"; fi
done
cp "$here/series" "$out.tmp/"
{
    echo "source: $src_id"
    echo "patches: ${patches[*]}"
    echo "built: $(date -u +%FT%TZ) in $(($(date +%s) - start)) s with -j$jobs"
} >"$out.tmp/INFO"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out/bzImage"
