#!/bin/bash
# A minimal Debian 12 root, made once and kept as a tar for the next runs.
#
#   packaging/rootfs.sh PKG,PKG,...      -> prints the path of the tar
#
# `debootstrap --variant=minbase --include=PKG,... bookworm` the first time
# (about 40 s, from the Debian mirror), then the cached tar at once. One tar per
# package list, named by its checksum, so the boot test (test-nspawn.sh) and the
# fresh-machine test (test-fresh.sh) share the logic and the cache but not the
# root. Parallel runs wait for each other (flock) instead of debootstrapping twice.
#
# Environment: ROOTFS_CACHE (default tests/.cache/rootfs, gitignored, survives
# `make clean`), MIRROR (default http://deb.debian.org/debian), FRESH=1 makes
# the tar again.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
CACHE=${ROOTFS_CACHE:-$REPO/tests/.cache/rootfs}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
INCLUDE=${1:?usage: rootfs.sh PKG,PKG,...}
TAR=$CACHE/bookworm-$(printf '%s' "$INCLUDE" | md5sum | cut -c1-8).tar

[ "$(id -u)" = 0 ] || { echo "rootfs.sh: debootstrap needs root" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "rootfs.sh: missing debootstrap (apt-get install debootstrap)" >&2; exit 2; }
mkdir -p "$CACHE"
exec 9>"$TAR.lock"
flock 9
if [ -f "$TAR" ] && [ "${FRESH:-0}" != 1 ]; then
	echo "$TAR"
	exit 0
fi
work=$(mktemp -d "$CACHE/.debootstrap.XXXXXX")
trap 'rm -rf "$work"' EXIT
log=${TAR%.tar}.log
echo "rootfs.sh: debootstrap --variant=minbase --include=$INCLUDE bookworm ($MIRROR)" >&2
start=$(date +%s)
if ! debootstrap --variant=minbase --include="$INCLUDE" bookworm "$work/root" "$MIRROR" >"$log" 2>&1; then
	tail -n 20 "$log" >&2
	echo "rootfs.sh: debootstrap failed (log: $log)" >&2
	exit 1
fi
rm -f "$work/root/var/cache/apt/archives/"*.deb
tar -C "$work/root" -cf "$TAR.tmp" .
mv "$TAR.tmp" "$TAR"
echo "rootfs.sh: debootstrap took $(($(date +%s) - start)) s" >&2
echo "$TAR"
