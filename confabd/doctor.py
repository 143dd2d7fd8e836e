"""`confabctl doctor`: is everything in place for the next session of each agent to be shipped?

Each check is one line: `ok`, `warn` or `FAIL`, what was found, and for
anything short of ok what to do. The checks, in the order a session needs
them: the hooks of every agent found here (installed, pointing at a program
that exists; Codex's, Cursor's and OpenCode's in agent_checks.py), the master
(answering), where the lines go (the backend and the server's word on the
key, or the local archive), the sync dir (writable), the clock (against the
backend's). Exit 0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import email.utils
import json
import os
import tempfile
import time
from typing import NamedTuple, Optional

from . import client, fileio, paths
from .config import choose_sink, load_backend_config, load_settings
from .errors import ConfabdError

CLOCK_SKEW_S = 300.0  # beyond this, timestamps in sessions and logs mislead


class Check(NamedTuple):
    verdict: str  # "ok" | "warn" | "FAIL"
    what: str
    todo: str = ""


def run_checks(home: str, settings_file: Optional[str] = None) -> list[Check]:
    from .agent_checks import agent_checks
    from .providers import detect

    found = [agent.name for agent in detect.installed()]
    checks = []
    if settings_file or "claude-code" in found or not found:  # no agent at all: say what Claude Code needs
        checks = hooks_checks(settings_file or default_claude_settings(home))
    checks += agent_checks(found)  # Codex's, Cursor's, OpenCode's hooks, where the agent is here
    checks.append(master_check())
    try:
        settings = load_settings(paths.user_settings_path(home))
        backend = load_backend_config(home)
    except ConfabdError as exc:
        return checks + [Check("FAIL", f"configuration: {exc}", "fix the file it names (confabd --check-config)")]
    if choose_sink(settings, backend) == "archive":
        archive = settings.archive_path or paths.default_archive_path(home)
        checks.append(Check("warn", f"no backend configured: sessions go to the local archive {archive}",
                            "confabctl login --backend-url URL, to ship them to a confab backend"))
        server_date = None
    else:
        check, server_date = backend_check(backend.backend_url, backend.api_key)
        checks.append(check)
    checks.append(sync_dir_check(paths.sync_dir(home, os.environ, settings.state_dir)))
    checks.append(clock_check(server_date))
    return checks


def default_claude_settings(home: str) -> str:
    base = os.environ.get("CLAUDE_CONFIG_DIR") or os.path.join(home, ".claude")
    return os.path.join(base, "settings.json")


def hooks_checks(settings_file: str) -> list[Check]:
    from .hooks_install import EVENTS, TOOL_EVENTS, hook_program, is_our_command

    try:
        with open(settings_file, "rb") as f:
            settings = json.loads(f.read() or b"{}")
    except FileNotFoundError:
        settings = {}
    except (OSError, ValueError) as exc:
        return [Check("FAIL", f"hooks: cannot read {settings_file} ({exc})", "fix the file, then confabctl install-hooks")]
    hooks = settings.get("hooks") if isinstance(settings, dict) else None
    found = []
    for event, arg in EVENTS + TOOL_EVENTS:  # the hooks install-hooks writes, and only those
        # without a tool hook sessions are still shipped, only the commit and PR links are lost: a warning
        topic, missing = ("links", "warn") if (event, arg) in TOOL_EVENTS else ("hooks", "FAIL")
        commands = [entry.get("command") for group in ((hooks or {}).get(event) or []) if isinstance(group, dict)
                    for entry in (group.get("hooks") or []) if isinstance(entry, dict)]
        ours = [c for c in commands if is_our_command(c)]
        if not ours:
            found.append(Check(missing, f"{topic}: no {event} hook of ours in {settings_file}",
                               "confabctl install-hooks"))
            continue
        program = hook_program(ours[0])
        if os.path.basename(program) == "confab":
            found.append(Check("warn", f"{topic}: {event} runs the Go confab CLI ({program})",
                               "confabctl install-hooks, to have confabd ship this session"))
        elif not _runnable(program):
            found.append(Check("FAIL", f"{topic}: {event} calls {program}, which is not there (the hook does nothing)",
                               "confabctl install-hooks, from the confabctl you use now"))
        else:
            found.append(Check("ok", f"{topic}: {event} calls {program}"))
    return found


def _runnable(program: str) -> bool:
    if os.path.isabs(program):
        return os.access(program, os.X_OK)
    import shutil

    return shutil.which(program) is not None


def master_check() -> Check:
    try:
        reply, path, system = client.request_any({"type": "ping"}, timeout=5.0)
    except client.NoMaster as exc:
        return Check("warn", f"master: none answers ({exc})",
                     "the next session's hook starts one; or now: systemctl --user start confabd, "
                     "or confabd --daemon")
    except (client.ProtocolError, OSError) as exc:
        return Check("FAIL", f"master: cannot talk to it ({exc})", "confabctl status; see the master's log")
    if not reply.get("ok"):
        return Check("FAIL", f"master on {path}: {reply.get('error')}", "see the master's log")
    return Check("ok", f"master: pid {reply.get('pid')} ({'system' if system else 'user'} mode) on {path}")


def backend_check(url: str, api_key: str) -> tuple[Check, Optional[float]]:
    """The server's word on the key; and its clock (Date header), for the clock check."""
    from .sinks.base import AuthFailed, SinkError
    from .sinks.http import HttpSink

    if not api_key:
        return Check("FAIL", f"backend {url}: no API key", "confabctl login"), None
    try:
        with HttpSink(url, api_key, timeout=10.0) as sink:
            answer = sink.validate_key()
            server_date = _parse_date(sink.last_date)
    except AuthFailed as exc:
        return Check("FAIL", f"backend {url}: the key is refused ({exc})", "confabctl login"), None
    except (SinkError, ConfabdError) as exc:
        return Check("FAIL", f"backend {url}: not reachable ({exc})",
                     "check the URL (confabctl login --backend-url URL) and the network; "
                     "lines wait in the transcripts meanwhile"), None
    if answer.get("valid") is not True:
        return Check("FAIL", f"backend {url}: the key is not valid", "confabctl login"), server_date
    return Check("ok", f"backend {url}: reachable, the key is valid"), server_date


def _parse_date(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def sync_dir_check(sync_dir: str) -> Check:
    try:
        fileio.make_dirs(sync_dir, 0o700)
        fd, probe = tempfile.mkstemp(prefix=".doctor-", dir=sync_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return Check("FAIL", f"sync dir {sync_dir}: not writable ({exc.strerror})",
                     "free the disk or fix its permissions: State and inbox records are written there")
    return Check("ok", f"sync dir {sync_dir}: writable")


def clock_check(server_time: Optional[float], now: Optional[float] = None) -> Check:
    if server_time is None:
        return Check("ok", "clock: not compared (no backend answered)")
    skew = (time.time() if now is None else now) - server_time
    if abs(skew) > CLOCK_SKEW_S:
        return Check("warn", f"clock: {skew:+.0f} s off the backend's", "set the time (e.g. systemd-timesyncd)")
    return Check("ok", f"clock: within {CLOCK_SKEW_S:.0f} s of the backend's")


def run_doctor(args) -> int:
    import sys

    checks = run_checks(paths.home_dir(), getattr(args, "settings", None))
    if getattr(args, "json", False):
        print(json.dumps([c._asdict() for c in checks], indent=2))
    else:
        for check in checks:
            print(f"{check.verdict:<4}  {check.what}")
            if check.todo:
                print(f"      -> {check.todo}")
    sys.stdout.flush()
    return 1 if any(c.verdict == "FAIL" for c in checks) else 0

