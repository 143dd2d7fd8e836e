# Sourced by the container tests (test-nspawn.sh, test-fresh.sh): how a check is said.
# Each check prints PASS or FAIL and counts failures; the script exits with their number.
failures=0

log() { printf '\n==> %s\n' "$*"; }
pass() { printf 'PASS: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; failures=$((failures + 1)); }
check() { # check "what" command...
	local what=$1
	shift
	if "$@"; then pass "$what"; else fail "$what"; fi
}
