#!/bin/bash
# Fresh-machine test: a clone of this repository's HEAD on a minimal Debian 12
# runs the README's first command and its Quick start, as ordinary users.
#
#   sudo packaging/test-fresh.sh                  (make -C packaging fresh)
#
# Root only (systemd-nspawn). The first run debootstraps a minbase bookworm
# with python3, python3-venv, git, ca-certificates and sudo (rootfs.sh, about a
# minute, kept in tests/.cache/rootfs/) and builds a wheelhouse of the
# project's dependencies on the host (pip, cached in packaging/out/fresh/).
# The container has no network (--private-network): pip inside it installs
# from the wheelhouse only (PIP_NO_INDEX=1, PIP_FIND_LINKS), so this checks the
# install steps, not PyPI. The code blocks are read from README.md at test
# time (packaging/readme_blocks.py, from HEAD's README.md), so the README stays
# what a new user can really run:
#   1. alice: `git clone` of HEAD (a bundle), then the README's first code
#      block (`sh packaging/install-user.sh`) in the clone: it succeeds, says
#      that ~/.local/bin is not on PATH, and ends with a running master;
#   2. bob: his own clone, then the "Quick start" block verbatim (bash, -e and
#      pipefail, each command traced), to its end with exit 0; then
#      `confabctl archive list --json` shows the session.
# Uncommitted changes are not tested: the clone is of the last commit.
# Prints PASS/FAIL per check and exits 1 if any failed, 2 if it cannot run.
#
# Environment: MIRROR, FRESH=1 (see rootfs.sh), KEEP=1 keeps the container root.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
WORK=${FRESH_WORK:-$HERE/out/fresh}
ROOT=$WORK/root
WHEELS=$WORK/wheels
INCLUDE=python3,python3-venv,git,ca-certificates,sudo
# shellcheck source=checks.sh
. "$HERE/checks.sh"

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
for tool in debootstrap systemd-nspawn git python3; do
	command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install debootstrap systemd-container git python3-venv)" >&2; exit 2; }
done
cleanup() { if [ "${KEEP:-0}" != 1 ]; then rm -rf "$ROOT"; fi; }
trap cleanup EXIT
mkdir -p "$WORK"
start_all=$(date +%s)

# --- the README's code blocks, as they are in HEAD (what the clone gets) ------------------
git -C "$REPO" show HEAD:README.md >"$WORK/README.md" || { echo "no README.md in HEAD" >&2; exit 2; }
readme_block() { python3 "$HERE/readme_blocks.py" "$WORK/README.md" "$1"; }
FIRST=$(readme_block first) || exit 1
QUICK=$(readme_block "Quick start") || exit 1
echo "README's first block: $FIRST"
printf 'README Quick start block:\n%s\n' "$QUICK"
check "the README's first command runs install-user.sh" grep -q 'install-user\.sh' <<<"$FIRST"

# --- wheels for the offline container --------------------------------------------------
# The project's dependencies (what pip resolves for `pip install .` on the host's
# python3, the container's) and the build backend; not confabd itself: the
# container builds that from its clone.
log "wheelhouse"
stamp=$(cat "$REPO/pyproject.toml" "$REPO/setup.cfg" | md5sum | cut -c1-16)
if [ "$(cat "$WHEELS/.stamp" 2>/dev/null)" != "$stamp" ]; then
	rm -rf "$WHEELS" "$WORK/src"
	[ -x "$WORK/pip/bin/pip" ] || python3 -m venv "$WORK/pip" || exit 2
	mkdir -p "$WORK/src"
	git -C "$REPO" archive HEAD pyproject.toml setup.cfg README.md confabd | tar -x -C "$WORK/src"
	export PIP_CACHE_DIR=$WORK/pip-cache PIP_DISABLE_PIP_VERSION_CHECK=1
	"$WORK/pip/bin/pip" wheel -q --wheel-dir "$WHEELS" "$WORK/src" &&
		"$WORK/pip/bin/pip" download -q --only-binary=:all: --dest "$WHEELS" "setuptools>=61" wheel ||
		{ echo "cannot build the wheelhouse (PyPI reachable?)" >&2; exit 2; }
	rm -f "$WHEELS"/confabd-*.whl
	echo "$stamp" >"$WHEELS/.stamp"
fi
ls "$WHEELS"

# --- a minimal Debian 12, two ordinary users, a bundle of HEAD --------------------------
BASE=$("$HERE/rootfs.sh" "$INCLUDE") || exit 2
rm -rf "$ROOT"
mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$BASE"
# The container shares the host's uids (no user namespace): its users get uids
# far above the host's ordinary range, or a host test's `pkill -u UID` of its
# throwaway user could kill them.
uid=$((100000 + $$ % 50000))
for user in alice bob; do
	while getent passwd "$uid" >/dev/null; do uid=$((uid + 1)); done
	chroot "$ROOT" useradd -m -u "$uid" -s /bin/bash "$user"
	uid=$((uid + 1))
done
git -C "$REPO" bundle create "$ROOT/srv/confabd.bundle" HEAD 2>/dev/null || { echo "git bundle failed" >&2; exit 2; }
chmod 644 "$ROOT/srv/confabd.bundle"
printf '%s\n' "$QUICK" >"$ROOT/srv/quick-start.sh"
printf '%s\n' "$FIRST" >"$ROOT/srv/first.sh"

as_user() { # user command... : in the container, no network, pip offline
	systemd-nspawn -q -D "$ROOT" --machine="fresh-$1" --register=no --keep-unit --private-network --as-pid2 \
		--bind-ro="$WHEELS:/opt/wheels" --user="$1" --chdir="/home/$1" \
		--setenv=HOME="/home/$1" --setenv=USER="$1" --setenv=LOGNAME="$1" --setenv=SHELL=/bin/bash \
		--setenv=PATH=/usr/local/bin:/usr/bin:/bin --setenv=LANG=C.UTF-8 \
		--setenv=PIP_NO_INDEX=1 --setenv=PIP_FIND_LINKS=/opt/wheels --setenv=PIP_DISABLE_PIP_VERSION_CHECK=1 \
		"${@:2}"
}

# --- 1. the README's first command ------------------------------------------------------------
log "alice: git clone, then the README's first command"
start=$(date +%s)
# the master install-user.sh starts lives until the container's command ends: ask it then
as_user alice /bin/bash -c 'set -e
git -c advice.detachedHead=false clone -q /srv/confabd.bundle confabd
cd confabd
bash -e /srv/first.sh
echo "== first command: exit 0"
~/.local/bin/confabctl ping && echo "== master answers"' >"$WORK/alice.log" 2>&1
echo "took $(($(date +%s) - start)) s"
cat "$WORK/alice.log"
check "install-user.sh succeeded" grep -q '^== first command: exit 0' "$WORK/alice.log"
check "it names the venv and the commands it installed" grep -q 'install-user: installed confabd' "$WORK/alice.log"
check "it says ~/.local/bin is not on PATH" grep -q '/home/alice/.local/bin is not on PATH' "$WORK/alice.log"
check "the master it started answers" grep -q '^== master answers' "$WORK/alice.log"
check "alice's hooks are installed (guarded)" grep -q '\[ -x /home/alice/.local/bin/confabctl \] && exec' "$ROOT/home/alice/.claude/settings.json"

# --- 2. the Quick start -----------------------------------------------------------------------------
log "bob: git clone, then the README's Quick start, verbatim"
start=$(date +%s)
# Sourced by one bash with -e and pipefail: a failing command stops it. The
# master it started lives as long as this shell: the archive is read here too.
as_user bob /bin/bash -c 'git -c advice.detachedHead=false clone -q /srv/confabd.bundle confabd || exit 1
cd confabd
set -e -o pipefail -x
. /srv/quick-start.sh
set +e +x
echo "== quick start: exit 0"
for _ in $(seq 200); do
	confabctl archive list --json >/home/bob/archive.json 2>&1 &&
		/usr/bin/python3 -c "import json; assert json.load(open(\"/home/bob/archive.json\"))[\"sessions\"]" 2>/dev/null && break
	sleep 0.1
done
echo "== archive list --json:"; cat /home/bob/archive.json
echo "== archive list:"; confabctl archive list' >"$WORK/bob.log" 2>&1
echo "took $(($(date +%s) - start)) s"
cat "$WORK/bob.log"
check "the Quick start ran to its end with exit 0" grep -q '^== quick start: exit 0' "$WORK/bob.log"
sessions=$(python3 -c "import json,sys; print(' '.join(s['external_id'] for s in json.load(open(sys.argv[1]))['sessions']))" \
	"$ROOT/home/bob/archive.json" 2>/dev/null)
check "confabctl archive list shows the session (${sessions:-none})" test -n "$sessions"
for id in $sessions; do
	check "the archived session $id is the one the Quick start names" grep -q "$id" "$ROOT/srv/quick-start.sh"
done

echo
echo "fresh-machine test: $(($(date +%s) - start_all)) s"
if [ "$failures" = 0 ]; then
	echo "fresh-machine test: all checks passed"
	exit 0
fi
echo "fresh-machine test: $failures check(s) failed (logs in $WORK)"
exit 1
