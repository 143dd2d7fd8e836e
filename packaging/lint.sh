#!/bin/bash
# Check the built packages: lintian (no errors, no unexplained warnings),
# rpmlint (no errors, no warnings after the documented filters) and
# `systemd-analyze verify` on both units (no output at all).
#   packaging/lint.sh            (after build.sh; make -C packaging lint)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$HERE/out}
status=0

deb=$(ls "$OUT"/confabd_*.deb 2>/dev/null | head -n 1 || true)
rpm=$(ls "$OUT"/confabd-*.rpm 2>/dev/null | head -n 1 || true)
[ -n "$deb$rpm" ] || { echo "no package in $OUT: run build.sh first" >&2; exit 1; }

if [ -n "$deb" ]; then
	echo "== lintian $deb"
	# --fail-on error,warning: overrides (packaging/lintian/confabd) carry the reasons.
	lintian --fail-on error,warning "$deb" || status=1

	echo "== systemd-analyze verify (units from $deb)"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	dpkg-deb -x "$deb" "$tmp/root"
	mkdir -p "$tmp/system" "$tmp/user" "$tmp/xdg"
	chmod 700 "$tmp/xdg"
	# ExecStart must exist to verify: point it at the unpacked package.
	sed "s#/usr/bin/confabd#$tmp/root/usr/bin/confabd#" "$tmp/root/usr/lib/systemd/system/confabd.service" >"$tmp/system/confabd.service"
	sed "s#/usr/bin/confabd#$tmp/root/usr/bin/confabd#" "$tmp/root/usr/lib/systemd/user/confabd.service" >"$tmp/user/confabd.service"
	for mode in system user; do
		msgs=$(XDG_RUNTIME_DIR=$tmp/xdg systemd-analyze "--$mode" verify --man=no "$tmp/$mode/confabd.service" 2>&1) || status=1
		if [ -n "$msgs" ]; then echo "$msgs"; status=1; else echo "ok: $mode unit"; fi
	done
fi

if [ -n "$rpm" ]; then
	echo "== rpmlint $rpm"
	rpmlint -c "$HERE/rpm/rpmlint.toml" -r "$HERE/rpm/confabd.rpmlintrc" "$rpm" | tee "${TMPDIR:-/tmp}/confabd-rpmlint.$$" | tail -n 1
	grep -qE ' 0 errors, 0 warnings' "${TMPDIR:-/tmp}/confabd-rpmlint.$$" || { cat "${TMPDIR:-/tmp}/confabd-rpmlint.$$"; status=1; }
	rm -f "${TMPDIR:-/tmp}/confabd-rpmlint.$$"
fi
exit $status
