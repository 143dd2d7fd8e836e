"""`confabctl`'s commands for people: status, save, install-hooks, stop, ... (argparse).

confabd.ctl dispatches here for everything but a hook, so that a hook, run on
every Claude Code start and prompt, never loads this module. What the commands
import beyond it is imported inside the command that needs it.
"""

import os
import sys

from . import client, fileio, paths
from .ctl import (
    EXIT_CLOSED_PIPE, EXIT_FAIL, EXIT_NO_MASTER, EXIT_OK, EXIT_SESSION_FAILED, EXIT_USAGE, HOOK_RESPONSE,
    err, hook, request_with_autostart, session_config_dir, valid_id,
)


def build_parser():
    import argparse

    from . import __version__

    parser = argparse.ArgumentParser(
        prog="confabctl",
        description="Control the confabd master, and the Claude Code hooks that feed it.",
        epilog="Exit codes: 0 success, 1 failure, 2 usage error, 3 no master reachable, "
               "4 (status) a session is failed. "
               "The master's socket: $CONFABD_SOCKET, else the first that answers of "
               "$XDG_RUNTIME_DIR/confabd/control.sock (else ~/.confab/run/control.sock) and the system "
               "socket ($CONFABD_SYSTEM_SOCKET, else /run/confabd/control.sock).")
    parser.add_argument("--version", action="version", version=f"confabctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "hook", help="Claude Code hook: session-start, user-prompt-submit or session-end (JSON on stdin)",
        description="What Claude Code's hooks run (confabctl install-hooks writes them). Reads the hook's JSON "
                    "on stdin, prints " + HOOK_RESPONSE + " and exits 0, always: a problem is said on stderr "
                    "and never breaks the Claude Code session. session-start (and user-prompt-submit, on every "
                    "prompt: a no-op while the session's worker runs) registers the session with the "
                    "master (starting a user-mode master when none answers, unless the system config says "
                    "user_masters = \"never\"); session-end records the "
                    "SessionEnd input in the session's inbox and asks the master to finish the session "
                    "(final sync, then the session_end event), without waiting for the upload. "
                    "pre-tool-use and post-tool-use (before and after Bash and the GitHub MCP create-PR tool) "
                    "make commit and PR links as the Go confab CLI does: before a git commit or gh pr create "
                    "they ask Claude to add the session's link (a JSON permission decision on stdout, "
                    "nothing otherwise), after one they post the commit's or PR's URL to the backend; "
                    "CONFAB_DISABLE_LINK_FROM_GITHUB turns them off; they print nothing on error.")
    p.add_argument("event", choices=["session-start", "user-prompt-submit", "session-end", "pre-tool-use",
                                     "post-tool-use"])
    p.add_argument("--provider", default="claude-code", choices=["claude-code", "codex", "cursor", "opencode"],
                   help="the agent that runs the hook (codex: only session-start; cursor: session-start "
                        "and session-end; docs/PROVIDERS.md)")

    # `register` says what it does (people expect `start` to start the daemon); `start` still works.
    p = sub.add_parser("register", aliases=["start"],
                       help="register a session from flags, as the session-start hook does (alias: start)")
    p.add_argument("--session-id", required=True, metavar="ID")
    p.add_argument("--transcript", required=True, metavar="PATH")
    p.add_argument("--cwd", default="", metavar="DIR")
    p.add_argument("--parent-pid", type=int, default=0, metavar="PID",
                   help="the Claude Code process to watch (the session finishes when it exits)")

    p = sub.add_parser("stop", help="finish a session (final sync, session_end, cleanup)")
    p.add_argument("external_id", metavar="ID")
    p.add_argument("--wait", action="store_true", help="return only when the final sync is done")

    p = sub.add_parser("retry", help="try a failed or backing-off session again now",
                       description="Try a session again now instead of at its next backoff or failed_retry_s: "
                                   "the crash count starts again, its worker is (re)started, and a file blocked "
                                   "by a refused chunk or an oversized line is tried again. ID may be a "
                                   "unique prefix.")
    p.add_argument("external_id", metavar="ID")
    p = sub.add_parser("forget", help="drop a failed session for good (State and inbox removed, no session_end)",
                       description="Give up on a session whose worker does not run (failed, backoff, or a State "
                                   "file no master runs): its State and inbox are removed and no session_end "
                                   "is sent. What it delivered stays on the backend; lines not yet delivered "
                                   "are not sent (its transcript is kept: `confabctl save` can still upload "
                                   "them). Asks first, unless --yes. ID may be a unique prefix.")
    p.add_argument("external_id", metavar="ID")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    sub.add_parser("reload", help="have the master re-read its settings (as SIGHUP) and say whether it took them",
                   description="Ask the master, over its socket, to re-read its settings file as on SIGHUP. Exit 0 "
                               "when the new settings were taken (running workers use them from their next "
                               "cycle), 1 with the errors when they were not (the current settings are kept). "
                               "The system master takes it from root only.")
    sub.add_parser("handover", help="move your sessions from your own master to the system master",
                   description="Where the system service runs: stop your own user-mode master (its live sessions "
                               "are suspended, their State kept) and have the system master adopt every "
                               "session in your sync dir. Exit 3 when no system master answers.")

    p = sub.add_parser("status", help="the master and its sessions")
    p.add_argument("external_id", nargs="?", metavar="ID")
    p.add_argument("--json", action="store_true", help="print the status as one JSON object")

    p = sub.add_parser("metrics", help="the master's numbers as Prometheus text (sessions by state, lines, "
                                       "bytes, chunks, errors, restarts, lag; per sink)",
                       description="Print the master's metrics in the Prometheus text format: the numbers "
                                   "`status --json` shows. --output writes them atomically to a file instead "
                                   "(mode 0644), e.g. node_exporter's textfile directory from a timer.")
    p.add_argument("--output", metavar="FILE", help="write to FILE (atomically: a temporary file, then rename)")
    p.add_argument("--json", action="store_true", help="the same numbers as JSON: sessions by state, per sink totals")

    p = sub.add_parser("ping", help="exit 0 if a master answers")
    p.add_argument("--json", action="store_true", help="print {pid, version, socket} as JSON")
    sub.add_parser("shutdown", help="ask the master to stop gracefully")

    p = sub.add_parser("save", help="upload transcripts (and their subagent files) once, in the foreground",
                       description="Upload sessions now: each PATH, ID or unique ID prefix, or every local session "
                                   "with --all (--since limits it to recent ones). Lines the backend already "
                                   "holds are not sent again, so running it again resumes where it stopped.")
    p.add_argument("targets", metavar="PATH|ID", nargs="*")
    p.add_argument("--all", action="store_true", help="every local session of every coding agent (a backup of "
                                                      "the history Claude Code deletes after 30 days)")
    p.add_argument("--since", metavar="AGE", help="with --all: only sessions written within AGE (5d, 12h, 30m)")

    p = sub.add_parser("redaction-test", help="what redaction would change in FILE (no secret is printed)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--show", action="store_true", help="print each changed line as it would be sent")

    p = sub.add_parser("list", help="local sessions of every coding agent, newest first: id, agent, age, "
                                    "what confabd holds, title")
    p.add_argument("--since", metavar="AGE", help="only sessions written within AGE (5d, 12h, 30m, 2w)")
    p.add_argument("--provider", default=None, choices=["claude-code", "codex", "cursor", "opencode"],
                   help="only this agent's sessions")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("archive", help="the local archive (when no backend is configured)")
    asub = p.add_subparsers(dest="archive_command", metavar="SUBCOMMAND", required=True)
    a = asub.add_parser("list", help="archived sessions with their files and line counts")
    a.add_argument("--json", action="store_true")
    a = asub.add_parser("export", help="write a session's files back out as JSONL")
    a.add_argument("external_id", metavar="ID")
    a.add_argument("--out", default=None, metavar="DIR", help="output directory (default: one named after the session)")

    p = sub.add_parser("login", help="save the backend URL and a checked API key in ~/.confab/config.json",
                       description="Log in to a confab backend: with --api-key, the key is checked with the "
                                   "server and saved; without it, a device login: open the URL shown, enter "
                                   "the code, and the server hands out a new key. ~/.confab/config.json is "
                                   "written as the confab CLI writes it (mode 0600), its other keys kept.")
    p.add_argument("--backend-url", metavar="URL", help="the backend (default: the one already configured)")
    p.add_argument("--api-key", metavar="KEY", help="use this key instead of a device login")
    p.add_argument("--name", metavar="NAME", help="a name for the new key (default: this host's name)")
    sub.add_parser("logout", help="remove the API key from ~/.confab/config.json (nothing is uploaded then)")
    p = sub.add_parser("doctor", help="check hooks, master, backend and key, sync dir and clock; say what to do")
    p.add_argument("--settings", metavar="FILE", help="Claude Code settings file (default ~/.claude/settings.json)")
    p.add_argument("--json", action="store_true", help="the checks as a JSON list")

    for name, text in (("install-hooks", "add"), ("uninstall-hooks", "remove")):
        p = sub.add_parser(name, help=f"{text} confabd's hooks (or plugin) for every coding agent found here, "
                                      "or for the one --provider names; Claude Code's: the SessionStart/"
                                      "UserPromptSubmit/SessionEnd hooks and the PreToolUse/PostToolUse link hooks")
        p.add_argument("--settings", metavar="FILE", help="settings file of one agent (without --provider: "
                                                          "Claude Code's, default ~/.claude/settings.json; "
                                                          "with --provider codex, $CODEX_HOME/config.toml)")
        p.add_argument("--dry-run", action="store_true", help="show the result, change nothing")
        p.add_argument("--provider", default=None, choices=["claude-code", "codex", "cursor", "opencode"],
                       help="only this agent: Claude Code's hooks, Codex's SessionStart hook, "
                            "Cursor's sessionStart/sessionEnd in ~/.cursor/hooks.json, or the OpenCode plugin "
                            "(default: every agent whose directory exists or whose program is on PATH)")
        if name == "install-hooks":
            p.add_argument("--keep-confab", action="store_true",
                           help="leave the Go confab CLI's prompt and tool-use hooks beside ours (by default "
                                "they are replaced or removed; its session hooks always are)")
    return parser


def command(argv):
    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command]
    try:
        code = handler(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        if not stdout_closed():
            raise  # not our reader: the master's socket (below, as any OSError)
        # the reader went away (`confabctl status | head`): nothing to say, as coreutils
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
    except client.NoMaster as exc:
        err(str(exc))
        return EXIT_NO_MASTER
    except (client.ProtocolError, OSError) as exc:
        err(f"cannot talk to the master: {exc}")
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


def stdout_closed():
    """True when nobody reads our stdout any more (a pipe whose reader exited)."""
    import select

    poller = select.poll()
    poller.register(sys.stdout.fileno(), select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poller.poll(0))


def ask(message, timeout=10.0):
    """One request to the master; failure replies go to stderr and give None."""
    reply, _path, _system = client.request_any(message, timeout=timeout)
    if not reply.get("ok"):
        err(reply.get("error") or "the master refused the request")
        return None
    return reply


def cmd_hook(args):
    return hook([args.event])


def cmd_start(args):
    if not valid_id(args.session_id):
        err(f"invalid session id {args.session_id!r}: expected 1-128 characters of [A-Za-z0-9._-], "
            "not starting with '.'")
        return EXIT_USAGE
    message = {"type": "register", "external_id": args.session_id,
               "transcript_path": os.path.abspath(args.transcript), "cwd": args.cwd,
               "parent_pid": args.parent_pid, "claude_pid_hint": 0, "hook_pid": 0,
               "config_dir": session_config_dir(os.path.abspath(args.transcript))}
    reply = request_with_autostart(message)
    if not reply.get("ok"):
        err(reply.get("error"))
        return EXIT_FAIL
    if reply.get("registered"):
        print(f"session {args.session_id}: registered (worker {reply.get('worker_pid')})")
    else:
        print(f"session {args.session_id}: already registered"
              + (f"; {reply['note']}" if reply.get("note") else ""))
    return EXIT_OK


def cmd_stop(args):
    reply = ask({"type": "finish", "external_id": args.external_id, "wait": args.wait},
                timeout=None if args.wait else 10.0)
    if reply is None:
        return EXIT_FAIL
    print(f"session {args.external_id}: " + ("finished" if reply.get("finished") else "finishing"))
    return EXIT_OK


def cmd_status(args):
    reply = ask({"type": "status", "external_id": args.external_id})
    if reply is None:
        return EXIT_FAIL
    result = {"master": reply["master"], "sessions": reply["sessions"]}
    if "sinks" in reply:  # an older master has none
        result["sinks"] = reply["sinks"]
    if args.json:
        import json

        print(json.dumps(result, indent=2))
    else:
        print(format_status(result, terminal_width(), use_colour()))
    failed = any(s.get("state") == "failed" for s in result["sessions"])
    return EXIT_SESSION_FAILED if failed else EXIT_OK


def terminal_width():
    """The width to fit: the terminal's (or $COLUMNS), None (no limit) when stdout is a file or a pipe."""
    import shutil

    if not (os.environ.get("COLUMNS") or sys.stdout.isatty()):
        return None
    return max(40, shutil.get_terminal_size().columns)


def use_colour():
    """Colour only on a terminal, never with NO_COLOR (https://no-color.org) or TERM=dumb."""
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


STATE_COLOURS = {"failed": "31", "backoff": "33", "unreachable": "33", "syncing": "32", "finishing": "36"}
# Columns in the order they are dropped when the terminal is too narrow (first dropped first).
DROPPABLE = ("SINK", "PARENT", "RESTARTS", "WORKER", "LAST SYNC", "PROJECT", "USER", "AGENT")
ROOM_FOR_ERROR = 20  # columns kept for the start of LAST ERROR
SHORT_ID = 8  # like a short git hash: enough to tell sessions apart, `status ID` shows the whole one


def format_status(status, width=None, colour=False):
    """The status as a table that fits `width` columns (None: no limit)."""
    from .text import printable

    m = status["master"]
    lines = [fit(f"confabd {m['version']} master {m['pid']} ({m['mode']} mode), up "
                 f"{format_duration(m['uptime_s'])}, socket {m['socket']}", width)]
    sessions = status["sessions"]
    if not sessions:
        lines.append("no sessions")
        return "\n".join(lines)
    sinks = {s.get("sink") for s in sessions if s.get("sink")}
    if len(sinks) == 1:  # where the lines go, said once (a column when sessions differ)
        lines.append(fit("lines go to " + printable(describe_sink(sinks.pop())), width))
    wide = width is None or len(sessions) == 1
    rows = [status_row(s, wide) for s in sessions]
    agents = ["AGENT"] if any(r["AGENT"] != "claude-code" for r in rows) else []  # only beside other agents
    columns = ["SESSION"] + agents + (["USER"] if any("USER" in r for r in rows) else []) + [
        "PROJECT", "STATE", "WORKER", "PARENT", "RESTARTS", "LINES", "BEHIND", "LAST SYNC"] + (
        ["SINK"] if sinks else []) + ["LAST ERROR"]
    table = [dict(zip(columns, columns))] + [{k: printable(v) for k, v in r.items()} for r in rows]
    for name in DROPPABLE:  # drop what matters least until the fixed columns leave room for an error
        if width is None or table_width(table, columns[:-1]) + 2 + ROOM_FOR_ERROR <= width:
            break
        if name in columns:
            columns.remove(name)
    fixed = columns[:-1]
    widths = {c: max(len(r.get(c, "")) for r in table) for c in fixed}
    for r in table:
        cells = [r.get(c, "").ljust(widths[c]) for c in fixed]
        if colour and r is not table[0] and r["STATE"] in STATE_COLOURS:
            i = fixed.index("STATE")
            cells[i] = f"\033[{STATE_COLOURS[r['STATE']]}m{cells[i]}\033[0m"
        line = "  ".join(cells) + "  " + r.get("LAST ERROR", "")
        lines.append(fit(line.rstrip(), width, len(line) - len(line.rstrip()) if colour else 0))
    return "\n".join(line.rstrip() for line in lines)


def status_row(s, wide):
    files = (s.get("files") or {}).values()
    row = {
        "SESSION": s["external_id"] if wide or len(s["external_id"]) <= SHORT_ID + 1
        else s["external_id"][:SHORT_ID] + "…",
        "AGENT": s.get("provider") or "claude-code",
        "PROJECT": os.path.basename((s.get("cwd") or "").rstrip("/")) or "-",
        "STATE": s["state"], "WORKER": str(s.get("worker_pid") or "-"), "PARENT": str(s.get("parent_pid") or "-"),
        "RESTARTS": str(s.get("restarts", 0)), "LINES": str(sum(f.get("last_synced_line", 0) for f in files)),
        "BEHIND": str(s["behind"]) if isinstance(s.get("behind"), int) else "-",
        "SINK": describe_sink(s.get("sink") or "-"),
        "LAST SYNC": (s.get("last_sync_at") or "-").replace("T", " ")[:19], "LAST ERROR": s.get("last_error") or "",
    }
    if "uid" in s:
        row["USER"] = user_name(s["uid"])
    return row


def describe_sink(sink):
    """`archive:<path>` as "the local archive <path>"; a backend URL as it is."""
    return f"the local archive {sink[len('archive:'):]}" if sink.startswith("archive:") else sink


def user_name(uid):
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError, TypeError):
        return str(uid)


def table_width(table, columns):
    return sum(max(len(r.get(c, "")) for r in table) for c in columns) + 2 * (len(columns) - 1)


def fit(line, width, invisible=0):
    """`line` cut to `width` visible characters with an ellipsis (`invisible`: bytes of colour codes)."""
    if width is None or len(line) - invisible <= width:
        return line
    return line[: width + invisible - 1] + "…"


def format_duration(seconds):
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def cmd_ping(args):
    reply, path, _system = client.request_any({"type": "ping"}, timeout=5.0)
    if not reply.get("ok"):
        err(reply.get("error") or "the master refused the request")
        return EXIT_FAIL
    if args.json:
        import json

        print(json.dumps({"pid": reply.get("pid"), "version": reply.get("version"), "socket": path}))
    else:
        print(f"confabd master {reply.get('pid')} (version {reply.get('version')}) is alive")
    return EXIT_OK


def cmd_metrics(args):
    reply = ask({"type": "metrics"})
    if reply is None:
        return EXIT_FAIL
    if args.json:
        import json

        text = json.dumps({"sessions": reply.get("sessions", {}), "providers": reply.get("providers", {}),
                           "sinks": reply.get("sinks", [])}, indent=2) + "\n"
    else:
        text = reply["text"]
    if not args.output:
        sys.stdout.write(text)
        return EXIT_OK
    write_readable_file(args.output, text.encode())
    return EXIT_OK


def write_readable_file(path, data):
    """`data` to `path` all at once (a reader never sees half a file), readable by others (0644):
    node_exporter reads the textfile directory as its own user. The temporary name does not end
    in .prom, so the collector never reads it."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, 0o644)  # whatever the umask
            f.write(data)
            f.flush()
            os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        fileio.unlink_if_present(tmp)
        raise


def cmd_shutdown(args):
    reply = ask({"type": "shutdown"})
    if reply is None:
        return EXIT_FAIL
    print("the master is shutting down")
    return EXIT_OK


def user_settings():
    from .config import load_settings
    from .errors import ConfigError

    home = paths.home_dir()
    try:
        return home, load_settings(paths.user_settings_path(home))
    except ConfigError as exc:
        err(str(exc))
        raise SystemExit(EXIT_FAIL) from None


def cmd_save(args):
    from .listing import parse_since, resolve_targets
    from .save import run_save

    if bool(args.targets) == bool(args.all) or (args.since and not args.all):
        err("save: name sessions (PATH, ID or an ID prefix), or --all [--since AGE]")
        return EXIT_USAGE
    home, settings = user_settings()
    try:
        since = parse_since(args.since) if args.since else None
        paths_to_save = resolve_targets(home, args.targets, args.all, since)
    except ValueError as exc:
        err(f"save: {exc}")
        return EXIT_USAGE if args.since else EXIT_FAIL
    if args.all and not paths_to_save:
        print("no sessions to save")
        return EXIT_OK
    failed, several = 0, len(paths_to_save) > 1
    line = None
    if sys.stderr.isatty():  # one progress line for the whole run, on the terminal only
        from .progress import ProgressLine
        from .save import session_size

        line = ProgressLine(sys.stderr, sum(map(session_size, paths_to_save)))
    for n, path in enumerate(paths_to_save, 1):
        if line:
            line.start_session(f"[{n}/{len(paths_to_save)}] " if several else "")
        elif several:
            print(f"[{n}/{len(paths_to_save)}] {path}", flush=True)
        code = run_save(path, home, settings, line=line)
        if code == 130:  # Ctrl-C: run_save said what it holds and that running it again resumes
            return 130
        failed += code != 0
    if several:
        print(f"saved {len(paths_to_save) - failed} of {len(paths_to_save)} sessions"
              + (f"; {failed} failed (above); running it again resumes them" if failed else ""))
    return EXIT_FAIL if failed else EXIT_OK


def cmd_redaction_test(args):
    from .redaction_test import run_redaction_test

    return run_redaction_test(args.file, args.show)


def cmd_list(args):
    from .listing import run_list

    return run_list(args)


def cmd_archive(args):
    from . import archive_cli

    home, settings = user_settings()
    archive = settings.archive_path or paths.default_archive_path(home)
    if args.archive_command == "list":
        return archive_cli.cmd_list(archive, args.json)
    return archive_cli.cmd_export(archive, args.external_id, args.out)


def hook_command_prefix():
    """How Claude Code should call us: this confabctl script, else `python -m confabd.ctl`."""
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) == "confabctl":
        return os.path.abspath(script)
    return f"{sys.executable} -I -m confabd.ctl"  # -I: not confabd/ from the project dir


def cmd_doctor(args):
    from .doctor import run_doctor

    return run_doctor(args)


def cmd_login(args):
    from .login import run_login

    return run_login(args)


def cmd_logout(args):
    from .login import run_logout

    return run_logout(args)


def _verb(name, args):
    from . import verbs

    return getattr(verbs, name)(args)


def provider_installer(name):
    import importlib

    return importlib.import_module(f".providers.{name}.install", __package__)


def install_one(provider, settings, dry_run, keep_confab=False):
    if provider in ("codex", "cursor", "opencode"):
        install = provider_installer(provider)
        return install.install(settings, hook_command_prefix(), dry_run)
    from .hooks_install import install_hooks

    return install_hooks(settings, hook_command_prefix(), dry_run, keep_confab=keep_confab)


def uninstall_one(provider, settings, dry_run):
    if provider in ("codex", "cursor", "opencode"):
        return provider_installer(provider).uninstall(settings, dry_run)
    from .hooks_install import uninstall_hooks

    return uninstall_hooks(settings, dry_run)


def cmd_install_hooks(args):
    from .providers import detect

    def install(name, settings=None):
        return install_one(name, settings, args.dry_run, args.keep_confab)

    one = detect.one_or_all(args.provider, args.settings)
    if one:
        return install(one, args.settings)
    return detect.for_each_agent(install, "installing")


def cmd_uninstall_hooks(args):
    from .providers import detect

    one = detect.one_or_all(args.provider, args.settings)
    if one:
        return uninstall_one(one, args.settings, args.dry_run)
    return detect.for_each_agent(lambda name: uninstall_one(name, None, args.dry_run), "removing")


COMMANDS = {
    "retry": lambda args: _verb("cmd_retry", args), "forget": lambda args: _verb("cmd_forget", args),
    "reload": lambda args: _verb("cmd_reload", args), "handover": lambda args: _verb("cmd_handover", args),
    "hook": cmd_hook, "register": cmd_start, "start": cmd_start, "stop": cmd_stop, "status": cmd_status, "metrics": cmd_metrics, "ping": cmd_ping,
    "shutdown": cmd_shutdown, "save": cmd_save, "archive": cmd_archive,
    "list": cmd_list, "redaction-test": cmd_redaction_test, "doctor": cmd_doctor, "login": cmd_login, "logout": cmd_logout, "install-hooks": cmd_install_hooks, "uninstall-hooks": cmd_uninstall_hooks,
}
