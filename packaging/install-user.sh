#!/bin/sh
# Install confabd for the current user from this checkout, add the Claude Code
# hooks, and start the master (systemd user unit when available, else --daemon).
#
#   sh packaging/install-user.sh [--no-hooks]
#   sh packaging/install-user.sh --uninstall
#
# --uninstall takes the hooks out of ~/.claude/settings.json, stops the master,
# removes the user unit, the venv and the two commands. It keeps your data: the
# sync dir (~/.confab/sync), the local archive (~/.local/share/confabd/archive.sqlite3)
# and ~/.confab/config.json.
#
# Needs python3 (3.9+) with venv; on Debian: apt-get install python3-venv
# (done for you when run as root or with password-less sudo).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${CONFABD_PREFIX:-$HOME/.local/share/confabd}
bindir=${CONFABD_BINDIR:-$HOME/.local/bin}
unit_dir=${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user

say() { printf 'install-user: %s\n' "$*"; }
usage() { sed -n '2,14s/^# \{0,1\}//p' "$0"; }

hooks=yes
action=install
for arg in "$@"; do
    case $arg in
        --no-hooks) hooks=no ;;
        --uninstall) action=uninstall ;;
        -h|--help) usage; exit 0 ;;
        *) say "unknown option: $arg (see --help)" >&2; exit 2 ;;
    esac
done

ensure_venv_support() {
    python3 -c 'import ensurepip, venv' 2>/dev/null && return 0
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q python3-venv >/dev/null
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo apt-get install -y -q python3-venv >/dev/null
    else
        say "python3 cannot create virtual environments; run: sudo apt-get install python3-venv" >&2
        exit 1
    fi
}

start_master() {
    if "$bindir/confabctl" ping >/dev/null 2>&1; then
        say "a master is already running; restarting it to pick up the new code"
        "$bindir/confabctl" shutdown >/dev/null 2>&1 || true
    fi
    if systemctl --user show-environment >/dev/null 2>&1; then
        mkdir -p "$unit_dir"
        sed "s#/usr/bin/confabd#$bindir/confabd#g" \
            "$here/packaging/systemd/user/confabd.service" > "$unit_dir/confabd.service"
        systemctl --user daemon-reload
        systemctl --user enable --now confabd.service
        systemctl --user restart confabd.service
        say "started with systemd --user (systemctl --user status confabd)"
    else
        "$bindir/confabd" --daemon
        say "started in the background (no systemd user manager here): $bindir/confabd --daemon"
    fi
}

path_hint() {
    case ":$PATH:" in
        *":$bindir:"*) ;;
        *) say "$bindir is not on PATH in this shell; to use confabctl now, run:"
           say "    export PATH=\"$bindir:\$PATH\""
           say "(Debian's ~/.profile adds ~/.local/bin at your next login when the directory exists)" ;;
    esac
}

uninstall() {
    if [ -x "$bindir/confabctl" ]; then
        "$bindir/confabctl" uninstall-hooks || say "could not remove the hooks; run: confabctl uninstall-hooks" >&2
    fi
    if [ -f "$unit_dir/confabd.service" ] && systemctl --user show-environment >/dev/null 2>&1; then
        systemctl --user disable --now confabd.service >/dev/null 2>&1 || true
    fi
    if [ -x "$bindir/confabctl" ] && "$bindir/confabctl" ping >/dev/null 2>&1; then
        "$bindir/confabctl" shutdown >/dev/null 2>&1 || true   # live sessions are flushed and kept
    fi
    if [ -f "$unit_dir/confabd.service" ]; then
        rm -f "$unit_dir/confabd.service"
        systemctl --user daemon-reload >/dev/null 2>&1 || true
    fi
    rm -f "$bindir/confabd" "$bindir/confabctl"
    rm -rf "$prefix/venv"
    rmdir "$prefix" 2>/dev/null || true
    say "removed the hooks, the master, the user unit, $prefix/venv and the commands in $bindir"
    say "kept your data: ~/.confab (sync dir, config.json) and the local archive under ~/.local/share/confabd"
}

if [ "$action" = uninstall ]; then
    uninstall
    exit 0
fi

ensure_venv_support
python3 -m venv "$prefix/venv"
"$prefix/venv/bin/pip" install --quiet --disable-pip-version-check "$here"
mkdir -p "$bindir"
# Lean entry scripts (as the packages install): pip's generated ones import `re`
# first, which costs the hook, run on every Claude Code start, ~5 ms. confabctl's
# runs without `site` (-S, ~3 ms more) and puts the venv's packages on the path itself.
entry() {  # name, module, more interpreter flags, a directory to put on sys.path ("": none)
    rm -f "$bindir/$1"
    "$prefix/venv/bin/python" -I - "$bindir/$1" "$prefix/venv/bin/python" "$2" "$3" "$4" <<'PY'
import sys
out, python, module, flags, site = sys.argv[1:]
path = f"sys.path.append({site!r})\n" if site else ""
with open(out, "w") as f:
    f.write(f"#!{python} -I{flags}\nimport sys\n{path}from {module} import main\nsys.exit(main())\n")
PY
    chmod 755 "$bindir/$1"
}
site_packages=$("$prefix/venv/bin/python" -I -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
entry confabd confabd.master_cli "" ""
entry confabctl confabd.ctl S "$site_packages"
say "installed $("$bindir/confabd" --version) into $prefix/venv, commands in $bindir"
if [ "$hooks" = yes ]; then
    "$bindir/confabctl" install-hooks
fi
start_master
"$bindir/confabctl" status
path_hint
