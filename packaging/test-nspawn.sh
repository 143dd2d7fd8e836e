#!/bin/bash
# Boot test: the .deb on a clean Debian 12 under a real systemd.
#
#   sudo packaging/test-nspawn.sh [path/to/confabd_*.deb]     (make -C packaging nspawn)
#
# Root only; takes a few minutes the first time (debootstrap of a minimal
# bookworm with systemd, about 60 s, from the Debian mirror, by rootfs.sh: the
# result is kept as tests/.cache/rootfs/bookworm-*.tar for the next runs), then
# about a minute.
# Without an argument it builds the .deb first (build.sh deb; GIT_REF=HEAD
# builds it from the last commit instead of the work tree).
#
# What it checks, inside `systemd-nspawn --boot` (its own network namespace:
# the test backend listens on the container's loopback):
#   1. `apt-get install ./confabd_*.deb` with no network: postinst enables and
#      starts confabd.service; it reaches `active` (Type=notify notified);
#   2. `confabctl status` answers (root, then a user);
#   3. `systemctl reload` keeps the same master;
#   4. alice runs `confabctl install-hooks`; a session registered by her (a
#      stand-in "claude" process runs her installed hook command line through
#      `sh -c`, as Claude Code does) syncs to tests/fakebackend.py;
#   5. `systemctl restart confabd` keeps the session (re-adopted from its
#      State file): lines appended meanwhile arrive, none twice;
#   6. the session-end hook finishes it (session_end event, State removed);
#   7. a second session: `systemctl stop confabd` delivers its last lines;
#   8. `apt-get purge confabd` leaves nothing of the package behind, tells the
#      admin that users' hooks stay, and alice's installed hook command lines,
#      still in her settings.json, are silent and exit 0 through `sh -c`.
# Prints PASS/FAIL per check and exits 1 if any failed.
#
# Environment: MIRROR (default http://deb.debian.org/debian), KEEP=1 keeps the
# container root afterwards, FRESH=1 re-runs debootstrap (see rootfs.sh).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
WORK=${NSPAWN_WORK:-$HERE/out/nspawn}
ROOT=$WORK/root
INCLUDE=systemd,systemd-sysv,dbus,passwd,procps,python3,python3.11
PORT=18080
API_KEY=cfb_$(printf 'n%.0s' $(seq 40))
# shellcheck source=checks.sh
. "$HERE/checks.sh"

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
for tool in debootstrap systemd-nspawn nsenter; do
	command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install debootstrap systemd-container util-linux)" >&2; exit 2; }
done

DEB=${1:-}
if [ -z "$DEB" ]; then
	log "building the .deb"
	DEB=$("$HERE/build.sh" deb | tail -n 1) || { echo "build failed" >&2; exit 1; }
fi
[ -f "$DEB" ] || { echo "no such package: $DEB" >&2; exit 2; }

cleanup() {
	if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
		# systemd-nspawn turns SIGTERM into an orderly poweroff of the container.
		kill -TERM "$NSPAWN_PID" 2>/dev/null
		for _ in $(seq 300); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$NSPAWN_PID" 2>/dev/null
		wait "$NSPAWN_PID" 2>/dev/null
	fi
	if [ "${KEEP:-0}" != 1 ]; then rm -rf "$ROOT"; fi
}
trap cleanup EXIT

# --- a minimal Debian 12 with systemd -------------------------------------------------
mkdir -p "$WORK"
BASE=$("$HERE/rootfs.sh" "$INCLUDE") || exit 1
rm -rf "$ROOT"
mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$BASE"
echo confabd-nspawn >"$ROOT/etc/hostname"
: >"$ROOT/etc/machine-id"
cp "$DEB" "$ROOT/root/confabd.deb"
mkdir -p "$ROOT/opt/confabd-test"
cp "$REPO/tests/fakebackend.py" "$ROOT/opt/confabd-test/"
# Stands in for Claude Code: runs the user's installed hook command line as its
# child through `sh -c`, with CLAUDE_PID set, as Claude Code does, then stays
# alive (its exit ends the session).
cat >"$ROOT/opt/confabd-test/claude" <<'EOF'
#!/bin/sh
printf '%s' "$HOOK" | CLAUDE_PID=$$ sh -c "$HOOK_LINE" >"$HOME/hook-start.out" 2>"$HOME/hook-start.err"
echo "hook exit $?" >>"$HOME/hook-start.out"
sleep 100000
EOF
chmod 755 "$ROOT/opt/confabd-test/claude"

# --- boot ----------------------------------------------------------------------------------
log "booting the container"
systemd-nspawn -D "$ROOT" --register=no --keep-unit --private-network --boot >"$WORK/console.log" 2>&1 &
NSPAWN_PID=$!
for _ in $(seq 100); do
	CPID=$(ps -o pid= --ppid "$NSPAWN_PID" 2>/dev/null | head -n 1 | tr -d ' ')
	[ -n "$CPID" ] && [ "$(cat "/proc/$CPID/comm" 2>/dev/null)" = systemd ] && break
	CPID=
	sleep 0.1
done
[ -n "$CPID" ] || { tail -n 30 "$WORK/console.log"; echo "container did not start" >&2; exit 1; }

c() { nsenter -t "$CPID" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
as_alice() { c runuser -u alice -- env HOME=/home/alice "$@"; }
py() { c /usr/lib/confabd/venv/bin/python3 -c "$@"; }
backend_lines() { # session-id -> number of transcript lines the backend holds
	py "import json,urllib.request
try:
    d = json.load(urllib.request.urlopen('http://127.0.0.1:$PORT/_test/session/$1'))
    print(len(d['files'].get('$1.jsonl', [])))
except Exception:
    print(0)"
}
backend_events() {
	py "import json,urllib.request
try:
    d = json.load(urllib.request.urlopen('http://127.0.0.1:$PORT/_test/session/$1'))
    print(' '.join(e.get('event_type', e.get('type', '?')) for e in d['events']))
except Exception:
    print('')"
}
wait_for() { # seconds command... : poll until it succeeds
	local limit=$1
	shift
	local end=$(($(date +%s) + limit))
	while [ "$(date +%s)" -lt "$end" ]; do
		"$@" && return 0
		sleep 0.5
	done
	return 1
}
lines_are() { [ "$(backend_lines "$1")" = "$2" ]; }
status_lines() { # session -> last_synced_line of its transcript in `confabctl status --json`
	c /usr/bin/confabctl status --json 2>/dev/null | c /usr/lib/confabd/venv/bin/python3 -c "import json,sys
for s in json.load(sys.stdin)['sessions']:
    if s['external_id'] == '$1':
        print(s['files'].get('$1.jsonl', {}).get('last_synced_line', 0))" 2>/dev/null
}
status_lines_are() { [ "$(status_lines "$1")" = "$2" ]; }
has_session_end() { backend_events "$1" | grep -qw session_end; }

# wait for the container's manager to listen, then for boot to finish
wait_for 60 sh -c "nsenter -t $CPID -a systemctl is-system-running >/dev/null 2>&1; [ \$? -le 1 ] && nsenter -t $CPID -a test -S /run/systemd/private"
state=$(c timeout 120 systemctl is-system-running --wait 2>&1)
echo "container systemd: $state (pid $CPID on the host)"
check "container boots to running/degraded" test "$state" = running -o "$state" = degraded

# --- 1. install ---------------------------------------------------------------------------
log "apt-get install ./confabd.deb (no network in the container)"
c sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /root/confabd.deb' >"$WORK/install.log" 2>&1
check "apt-get install ./confabd.deb" grep -q "Setting up confabd" "$WORK/install.log"
check "unit enabled by postinst" test "$(c systemctl is-enabled confabd)" = enabled
wait_for 30 sh -c "[ \"\$(nsenter -t $CPID -a systemctl is-active confabd)\" = active ]"
check "confabd.service active (Type=notify)" test "$(c systemctl is-active confabd)" = active
c systemctl status --no-pager confabd | head -n 12
MAIN1=$(c systemctl show -p MainPID --value confabd)

# --- 2. status -------------------------------------------------------------------------------
check "confabctl status (root)" c /usr/bin/confabctl status
check "confabctl --version" test "$(c /usr/bin/confabctl --version)" = "confabctl $(c /usr/bin/confabd --version | awk '{print $2}')"

# --- 3. reload ----------------------------------------------------------------------------------
cat >>"$ROOT/etc/confabd/confabd.toml" <<'EOF'

# nspawn test: sync quickly
sync_interval_ms = 500
sync_jitter_ms = 0
EOF
check "systemctl reload succeeds" c systemctl reload confabd
sleep 1
check "reload keeps the master" test "$(c systemctl show -p MainPID --value confabd)" = "$MAIN1" -a "$(c systemctl is-active confabd)" = active
cp "$ROOT/etc/confabd/confabd.toml" "$WORK/confabd.toml.good"
echo 'shutdown_timeout_ms = "soon"' >>"$ROOT/etc/confabd/confabd.toml"
check "reload with a bad config fails (ExecReload runs --check-config)" eval '! c systemctl reload confabd'
check "... and the master runs on with its settings" test "$(c systemctl show -p MainPID --value confabd)" = "$MAIN1" -a "$(c systemctl is-active confabd)" = active
check "... and the journal says why" sh -c "nsenter -t $CPID -a journalctl -u confabd --no-pager -o cat | grep -q \"shutdown_timeout_ms = 'soon'\""
cp "$WORK/confabd.toml.good" "$ROOT/etc/confabd/confabd.toml"

# --- 4. a user's session ------------------------------------------------------------------------
log "user alice, test backend on the container's loopback"
# alice's uid is the host's too (no user namespace): far above the ordinary
# range, so that no host test's `pkill -u` of its throwaway user can hit her.
ALICE_UID=$((100000 + $$ % 50000))
while getent passwd "$ALICE_UID" >/dev/null; do ALICE_UID=$((ALICE_UID + 1)); done
c useradd -m -u "$ALICE_UID" -s /bin/sh alice
c systemd-run --unit=fakebackend --quiet /usr/lib/confabd/venv/bin/python3 /opt/confabd-test/fakebackend.py \
	--port "$PORT" --api-key "$API_KEY"
wait_for 20 py "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/_test/counts')" >/dev/null 2>&1
check "test backend answers" py "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/_test/counts')"
as_alice mkdir -p /home/alice/.confab /home/alice/.claude/projects/-home-alice
as_alice sh -c "umask 077; printf '%s' '{\"backend_url\": \"http://127.0.0.1:$PORT\", \"api_key\": \"$API_KEY\"}' >/home/alice/.confab/config.json"
as_alice /usr/bin/confabctl install-hooks >"$WORK/install-hooks.log" 2>&1
check "confabctl install-hooks as alice" grep -q "hooks installed" "$WORK/install-hooks.log"
hook_line() { # event -> the command line alice's settings.json has for it
	c /usr/bin/python3 -c "import json
d = json.load(open('/home/alice/.claude/settings.json'))
print([h['command'] for g in d['hooks']['$1'] for h in g['hooks']][0])" 2>/dev/null
}
START_LINE=$(hook_line SessionStart)
END_LINE=$(hook_line SessionEnd)
echo "alice's hooks: $START_LINE | $END_LINE"
check "alice's hooks are guarded" test "$START_LINE" = "[ -x /usr/bin/confabctl ] && exec /usr/bin/confabctl hook session-start || true" \
	-a "$END_LINE" = "[ -x /usr/bin/confabctl ] && exec /usr/bin/confabctl hook session-end || true"

transcript_line() { # n session -> one JSONL line
	printf '{"type":"user","uuid":"u-%s-%s","sessionId":"%s","timestamp":"2026-01-01T00:00:0%sZ","cwd":"/home/alice","message":{"role":"user","content":"line %s"}}\n' "$2" "$1" "$2" "$(($1 % 10))" "$1"
}
append() { # session from to
	local i
	for i in $(seq "$2" "$3"); do transcript_line "$i" "$1"; done |
		as_alice sh -c "umask 077; cat >>/home/alice/.claude/projects/-home-alice/$1.jsonl"
}
start_session() { # session
	local hook
	hook=$(printf '{"session_id":"%s","transcript_path":"/home/alice/.claude/projects/-home-alice/%s.jsonl","cwd":"/home/alice","hook_event_name":"SessionStart","source":"startup"}' "$1" "$1")
	c systemd-run --unit="claude-$1" --quiet --uid=alice --setenv=HOOK="$hook" --setenv=HOOK_LINE="$START_LINE" \
		/opt/confabd-test/claude
}

S1=nspawn-session-1
append "$S1" 1 3
start_session "$S1"
wait_for 20 test -s "$ROOT/home/alice/hook-start.out"
echo "hook: $(cat "$ROOT/home/alice/hook-start.out" 2>/dev/null) $(cat "$ROOT/home/alice/hook-start.err" 2>/dev/null)"
check "session-start hook answered {\"continue\": true}" grep -q '"continue": *true' "$ROOT/home/alice/hook-start.out"
wait_for 30 status_lines_are "$S1" 3
check "alice's session syncing (status: 3 lines synced)" status_lines_are "$S1" 3
wait_for 10 lines_are "$S1" 3
check "alice's lines reached her backend (3 lines at the test backend)" lines_are "$S1" 3
as_alice /usr/bin/confabctl status
check "alice sees her session in confabctl status" sh -c "nsenter -t $CPID -a runuser -u alice -- /usr/bin/confabctl status --json | grep -q $S1"
WPID=$(c /usr/bin/confabctl status --json | c /usr/lib/confabd/venv/bin/python3 -c "import json,sys; print([s['worker_pid'] for s in json.load(sys.stdin)['sessions'] if s['external_id']=='$S1'][0])" 2>/dev/null)
check "worker runs as alice" test "$(c stat -c %U "/proc/${WPID:-0}" 2>/dev/null)" = alice

# --- 4b. the journal gets each record's priority ----------------------------------------------------
log "kill -9 alice's worker: the master's warning must reach journalctl -p warning"
warned() { c journalctl -u confabd -p warning --no-pager -o cat | grep -q "restarting in"; }
c kill -9 "${WPID:-0}"
wait_for 30 warned
check "journalctl -p warning shows the restart warning" warned
check "journal lines carry no timestamp of their own" sh -c "! nsenter -t $CPID -a journalctl -u confabd --no-pager -o cat | grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2} '"

# --- 5. restart keeps the session -----------------------------------------------------------------
log "systemctl restart confabd"
append "$S1" 4 5
c systemctl restart confabd
check "active again after restart" test "$(c systemctl is-active confabd)" = active
check "a new master after restart" test "$(c systemctl show -p MainPID --value confabd)" != "$MAIN1"
wait_for 30 status_lines_are "$S1" 5
check "session kept across restart (status: 5 lines synced)" status_lines_are "$S1" 5
check "session kept across restart (5 lines at the backend, none twice)" lines_are "$S1" 5
append "$S1" 6 6
wait_for 30 status_lines_are "$S1" 6
check "re-adopted session keeps syncing (6 lines)" status_lines_are "$S1" 6
check "session listed after restart" sh -c "nsenter -t $CPID -a /usr/bin/confabctl status --json | grep -q $S1"

# --- 6. session-end hook -----------------------------------------------------------------------------
CLAUDE1=$(c systemctl show -p MainPID --value "claude-$S1")
append "$S1" 7 7
end_hook=$(printf '{"session_id":"%s","transcript_path":"/home/alice/.claude/projects/-home-alice/%s.jsonl","cwd":"/home/alice","hook_event_name":"SessionEnd","reason":"prompt_input_exit"}' "$S1" "$S1")
out=$(printf '%s' "$end_hook" | nsenter -t "$CPID" -a runuser -u alice -- env HOME=/home/alice CLAUDE_PID="$CLAUDE1" sh -c "$END_LINE")
check "session-end hook answered" sh -c "printf '%s' '$out' | grep -q continue"
wait_for 30 has_session_end "$S1"
check "final line delivered (7 lines)" lines_are "$S1" 7
echo "events at the backend: $(backend_events "$S1")"
check "session_end event at the backend" has_session_end "$S1"
session_listed() { c /usr/bin/confabctl status --json 2>/dev/null | grep -q "\"$1\""; }
wait_for 30 sh -c "! nsenter -t $CPID -a /usr/bin/confabctl status --json | grep -q '\"$S1\"'"
check "finished session gone from confabctl status" eval '! session_listed "$S1"'
check "alice's State file gone (~alice/.confab/sync)" test ! -e "$ROOT/home/alice/.confab/sync/$S1.json"
c systemctl stop "claude-$S1"

# --- 7. stop finishes a running session -----------------------------------------------------------
log "systemctl stop confabd with a live session"
S2=nspawn-session-2
append "$S2" 1 2
: >"$ROOT/home/alice/hook-start.out"
start_session "$S2"
wait_for 30 status_lines_are "$S2" 2
check "second session synced (status: 2 lines)" status_lines_are "$S2" 2
append "$S2" 3 4
c systemctl stop confabd
check "inactive after stop" test "$(c systemctl is-active confabd)" = inactive
check "stop delivered the last lines (4 lines)" lines_are "$S2" 4
c journalctl -u confabd --no-pager | tail -n 15
c systemctl stop "claude-$S2"

# --- 7b. a bad config at start: exit 78, not restarted every 2 s ----------------------------------------
echo 'sink = "s3"' >>"$ROOT/etc/confabd/confabd.toml"
check "start with a bad config fails" eval '! c systemctl start confabd'
check "... with exit status 78" test "$(c systemctl show -p ExecMainStatus --value confabd)" = 78
check "... and the unit is failed, not restarting in a loop" test "$(c systemctl is-failed confabd)" = failed
cp "$WORK/confabd.toml.good" "$ROOT/etc/confabd/confabd.toml"
c systemctl reset-failed confabd

# --- 8. purge ----------------------------------------------------------------------------------------------
log "apt-get purge confabd"
c sh -c 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -q confabd' >"$WORK/purge.log" 2>&1
check "apt-get purge" grep -q "Purging configuration files for confabd" "$WORK/purge.log"
left=$(cd "$ROOT" && ls -d etc/confabd var/lib/confabd var/log/confabd run/confabd usr/lib/confabd \
	etc/systemd/system/multi-user.target.wants/confabd.service etc/init.d/confabd usr/bin/confabd 2>/dev/null)
check "nothing left after purge${left:+ (left: $left)}" test -z "$left"
check "purge told the admin that users' hooks stay" grep -q "confabctl uninstall-hooks" "$WORK/purge.log"
check "alice's hooks still in her settings.json" test "$(hook_line SessionEnd)" = "$END_LINE"
run_hook_line() { # line -> its output (stdout and stderr) and exit status, run as alice the way Claude Code runs it
	printf '%s' "$end_hook" | nsenter -t "$CPID" -a runuser -u alice -- env -i PATH=/usr/local/bin:/usr/bin:/bin \
		HOME=/home/alice sh -c "$1" 2>&1
	echo "exit $?"
}
for line in "$START_LINE" "$END_LINE"; do
	out=$(run_hook_line "$line")
	[ "$out" = "exit 0" ] && got= || got=" (got: $out)"
	check "after purge, sh -c '$line' is silent and exits 0$got" test "$out" = "exit 0"
done
contains() { case "$1" in *"$2"*) return 0 ;; esac; return 1; }
out=$(run_hook_line "/usr/bin/confabctl hook session-end")
check "control: the plain form fails after purge ($(echo $out))" contains "$out" "not found"

echo
if [ "$failures" = 0 ]; then
	echo "nspawn test: all checks passed"
	exit 0
fi
echo "nspawn test: $failures check(s) failed (logs in $WORK)"
exit 1
