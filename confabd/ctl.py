"""`confabctl`: the hooks of Claude Code (and the other agents), and the dispatch to its commands.

`confabctl hook ...` runs on every Claude Code session start, prompt and end, so
it is dispatched before argparse is imported and imports only `os`, `sys`,
`_json`, `_socket` and confabd.client/paths/fileio; it ends with `os._exit`,
skipping the interpreter's teardown. Every other command lives in confabd.cli,
loaded only for them. What a command or a rare hook path needs beyond that is
imported inside it.

Exit codes: 0 success, 1 failure, 2 usage error, 3 no master reachable,
4 (`status` only) the master answered and at least one session is failed.
Hooks always exit 0 and print HOOK_RESPONSE.
"""

import os
import sys

from . import client, fileio, paths

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NO_MASTER, EXIT_SESSION_FAILED = 0, 1, 2, 3, 4
EXIT_CLOSED_PIPE = 128 + 13  # what a program killed by SIGPIPE reports, as coreutils' do
HOOK_RESPONSE = '{"continue": true, "suppressOutput": true}'
MAX_HOOK_INPUT = 1 << 20  # bytes of hook JSON read from stdin
HOOK_REQUEST_TIMEOUT_S = 5.0
AUTOSTART_DEADLINE_S = 8.0  # a cold master start (imports, adoption) stays well under this
LAUNCH_FAILED_GRACE_S = 2.0
SESSION_END_TIMEOUT_S = 1.0  # SessionEnd hooks share a 1.5 s budget
RATE_LIMIT_RETRY_S = 2.0  # how long a registration retries a system master's rate limit

HELP_FLAGS = frozenset(("-h", "--help"))

# Same rule as confabd.records.validate_external_id, without importing re/msgspec.
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["hook"] and not HELP_FLAGS.intersection(argv):
        exit_at_once(hook(argv[1:]))
    from .cli import command  # everything but a hook: loaded only then

    return command(argv)


def exit_at_once(code):
    """End a hook without the interpreter's teardown (~2 ms of every hook, bench/RESULTS.md): its
    answer is written, its request answered, and it holds nothing that needs closing."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def err(message):
    sys.stderr.write(f"confabctl: {message}\n")


# ---------------------------------------------------------------------------
# Hooks: always print the response, always exit 0, say what went wrong on stderr.


class HookError(Exception):
    pass


TOOL_HOOKS = ("pre-tool-use", "post-tool-use")


def hook(args):
    provider, args = hook_provider(args)
    if provider == "codex":
        return hook_codex(args)
    if provider == "cursor":
        return hook_cursor(args)
    if provider == "opencode":
        return hook_opencode(args)
    if len(args) == 1 and args[0] in TOOL_HOOKS:
        return tool_hook(args[0])
    sys.stdout.write(HOOK_RESPONSE + "\n")
    sys.stdout.flush()
    event = args[0] if len(args) == 1 else ""

    def body():
        if provider != "claude-code":
            raise HookError(f"unknown --provider {provider!r} (expected claude-code, codex, cursor or opencode)")
        if event in ("session-start", "user-prompt-submit"):
            # Every prompt registers too (a no-op while a worker runs): a session whose SessionStart
            # never reached a master (hooks installed mid-session, --teleport, a refusal) is caught.
            hook_session_start(read_hook_input())
        elif event == "session-end":
            hook_session_end(read_hook_input())
        else:
            raise HookError("usage: confabctl hook session-start|session-end|user-prompt-submit "
                            f"(got {' '.join(args)!r})")

    return guarded_hook("", event, body)


def hook_provider(args):
    """(`--provider NAME` of a hook command line, default claude-code; the other words)."""
    rest, provider = [], "claude-code"
    words = iter(args)
    for word in words:
        if word == "--provider":
            provider = next(words, "")
        elif word.startswith("--provider="):
            provider = word.partition("=")[2]
        else:
            rest.append(word)
    return provider, rest


def guarded_hook(provider, event, body):
    """Run one agent's hook `body()`: whatever happens, say why on stderr and exit 0 (a hook must
    never fail the agent that runs it). `provider` "": Claude Code's, said without --provider."""
    where = f"hook {event or '?'}" + (f" --provider {provider}" if provider else "")
    try:
        body()
    except HookError as exc:
        err(f"{where}: {exc}")
    except BaseException as exc:  # noqa: BLE001 - a hook must never fail its agent
        if isinstance(exc, SystemExit) and not exc.code:
            return 0
        err(f"{where}: unexpected {type(exc).__name__}: {exc}")
    return 0


def hook_codex(args):
    """Codex's SessionStart (see confabd.providers.codex.hook); Codex has no end hook to honour."""
    from .providers.codex import hook as codex

    sys.stdout.write(codex.RESPONSE + "\n")
    sys.stdout.flush()
    event = args[0] if len(args) == 1 else ""

    def body():
        if event != "session-start":
            raise HookError(f"{' '.join(args) or 'no event'!r} is not used for codex: only session-start is "
                            "(a Codex session ends when its codex process exits); remove that hook from "
                            "config.toml")
        payload = read_hook_input()[3]
        try:
            external_id, transcript, cwd = codex.announce(payload, home=paths.home_dir())
        except codex.rollouts.BadRollout as exc:
            raise HookError(f"invalid Codex hook input: {exc}; ignored") from None
        except codex.Skip as exc:
            raise HookError(str(exc)) from None
        register(external_id, transcript, cwd, "codex")
    return guarded_hook("codex", event, body)


def hook_opencode(args):
    """What the confabd OpenCode plugin runs (see confabd.providers.opencode.hook); prints nothing."""
    from .providers.opencode import hook as opencode

    event = args[0] if len(args) == 1 else ""

    def body():
        if event not in ("session-start", "session-end"):
            raise HookError(f"usage: confabctl hook session-start|session-end --provider opencode (got {' '.join(args)!r})")
        payload = read_hook_input(require_location=False)[3]
        if event == "session-end":
            session_id = payload["session_id"]
            hook_session_end((session_id, "", "", {"session_id": session_id, "hook_event_name": "SessionEnd",
                                                   "reason": "OpenCode disposed of the session"}))
            return
        try:
            session_id, transcript, cwd, pid = opencode.announce(payload, home=paths.home_dir())
        except opencode.Skip as exc:
            raise HookError(str(exc)) from None
        register(session_id, transcript, cwd, "opencode", hint=pid)
    return guarded_hook("opencode", event, body)


def hook_cursor(args):
    """Cursor's sessionStart/sessionEnd (see confabd.providers.cursor.hook)."""
    from .providers.cursor import hook as cursor

    sys.stdout.write(cursor.RESPONSE + "\n")
    sys.stdout.flush()
    event = args[0] if len(args) == 1 else ""

    def body():
        if event not in ("session-start", "session-end"):
            raise HookError(f"usage: confabctl hook session-start|session-end --provider cursor (got {' '.join(args)!r})")
        payload = read_hook_input(require_location=False)[3]
        try:
            session_id, transcript, cwd, model = cursor.announce(payload, home=paths.home_dir())
        except cursor.BadInput as exc:
            raise HookError(f"invalid Cursor hook input: {exc}; ignored") from None
        if event == "session-start":
            register(session_id, transcript, cwd, "cursor", model)
        else:
            hook_session_end((session_id, transcript, cwd, cursor.end_payload(payload, transcript)))
    return guarded_hook("cursor", event, body)


def tool_hook(event):
    """PreToolUse / PostToolUse: commit and PR links (github_links.py). They run before and after every
    Bash call: print only what the Go client prints (nothing, mostly), say nothing on error, exit 0."""
    try:
        from . import github_links as links

        if links.disabled():
            return 0
        payload = read_hook_input()[3]
        target = lambda hook_input: links.link_target(hook_input, sync_dir(), paths.home_dir())  # noqa: E731
        if event == "pre-tool-use":
            answer = links.pre_tool_use(payload, target)
            if answer:
                sys.stdout.write(answer + "\n")
            return 0
        url = links.url_to_link(payload, links.run_git)
        found = target(payload) if url else None
        if found:
            links.post_link(found, url)
    except BaseException:  # noqa: BLE001 - a link is never worth failing a tool call
        pass
    return 0


def read_hook_input(require_location=True):
    """(session_id, transcript_path, cwd, payload) from the hook JSON on stdin."""
    if sys.stdin is None or sys.stdin.isatty():
        raise HookError("no hook input: expected Claude Code's hook JSON on stdin")
    data = sys.stdin.buffer.read(MAX_HOOK_INPUT + 1)
    if len(data) > MAX_HOOK_INPUT:
        raise HookError(f"hook input larger than {MAX_HOOK_INPUT} bytes; ignored")
    if not data.strip():
        raise HookError("empty hook input on stdin; nothing to do")
    try:
        payload = client.loads(data)
    except ValueError as exc:
        raise HookError(f"hook input is not valid JSON ({exc}); ignored") from None
    if not isinstance(payload, dict):
        raise HookError("hook input is not a JSON object; ignored")
    session_id = payload.get("session_id")
    if not valid_id(session_id):
        shown = repr(session_id)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise HookError(f"invalid session id {shown}: expected 1-128 characters of "
                        "[A-Za-z0-9._-], not starting with '.'; ignored")
    cwd = payload.get("cwd") if isinstance(payload.get("cwd"), str) else ""
    transcript = payload.get("transcript_path")
    if (not isinstance(transcript, str) or not transcript) and require_location:
        if not cwd:
            raise HookError("hook input has neither transcript_path nor cwd; ignored")
        transcript = default_transcript_path(cwd, session_id)
    return session_id, transcript, cwd, payload


def valid_id(value):
    return (isinstance(value, str) and 0 < len(value) <= 128 and value[0] != "."
            and all(c in _ID_CHARS for c in value))


def default_transcript_path(cwd, session_id):
    """~/.claude/projects/<cwd, non-alphanumerics as '-'>/<id>.jsonl, as Claude Code names it."""
    project = "".join(c if c.isascii() and c.isalnum() else "-" for c in cwd)
    return os.path.join(paths.home_dir(), ".claude", "projects", project, session_id + ".jsonl")


def session_config_dir(transcript):
    """The session's credential binding, resolved in the user's environment (bindings.py)."""
    from .bindings import session_config_dir

    return session_config_dir(transcript, paths.home_dir())


def claude_pid_hint():
    try:
        return int(os.environ.get("CLAUDE_PID", "0"))
    except ValueError:
        return 0


def hook_session_start(hook_input):
    session_id, transcript, cwd, _payload = hook_input
    register(session_id, transcript, cwd, "claude-code")


def register(session_id, transcript, cwd, provider, model="", hint=0):
    message = {"type": "register", "external_id": session_id, "transcript_path": transcript,
               "cwd": cwd, "parent_pid": os.getppid(), "claude_pid_hint": hint or claude_pid_hint(),
               "hook_pid": os.getpid()}
    if provider != "claude-code":  # an older master does not know the field: say it only when needed
        message["provider"] = provider
    if model:
        message["model"] = model
    config_dir = session_config_dir(transcript) if provider == "claude-code" else ""
    if config_dir:  # a binding picks its backend
        message["config_dir"] = config_dir
    try:
        reply = request_with_autostart(message)
    except (client.NoMaster, client.ProtocolError, OSError) as exc:
        state = write_fallback_state(session_id, transcript, cwd, provider, model)
        leave_note_for_system_master(session_id)
        raise HookError(f"{exc}; the session is recorded in {state} for the next master") from None
    if not reply.get("ok"):
        raise HookError(f"the master refused the session: {reply.get('error')}")


def request_with_autostart(message):
    """Send a request to the first master that answers ($CONFABD_SOCKET, else the user socket,
    then the system socket); when none does, start a user-mode master and retry until a deadline.
    A system master's "too many requests" reply is retried after its `retry_after`, briefly."""
    import time

    path = client.socket_candidates()[0][0]
    try:
        reply, answered, _system = client.request_any(message, timeout=HOOK_REQUEST_TIMEOUT_S)
        deadline = time.monotonic() + RATE_LIMIT_RETRY_S
        while not reply.get("ok") and reply.get("retry_after") and time.monotonic() < deadline:
            time.sleep(min(float(reply["retry_after"]), 0.5))
            reply = client.request(answered, message, timeout=HOOK_REQUEST_TIMEOUT_S)
        return reply
    except client.NoMaster:
        pass
    from .hostwide import autostart_refusal

    refusal = autostart_refusal()
    if refusal:
        raise client.NoMaster(f"no confabd master answers on {path} nor on the system socket; {refusal}")
    try:
        launcher = client.spawn_master()
    except OSError as exc:
        raise client.NoMaster(f"no confabd master answers on {path}, and starting one failed ({exc})") from None
    deadline = time.monotonic() + AUTOSTART_DEADLINE_S
    delay = 0.01
    while True:
        time.sleep(delay)
        try:
            return client.request(path, message, timeout=HOOK_REQUEST_TIMEOUT_S)
        except client.NoMaster:
            pass
        if launcher:
            done, status = os.waitpid(launcher, os.WNOHANG)
            if done:
                launcher = 0
                if status:  # `confabd --daemon` failed; a concurrent hook's master may still be coming
                    deadline = min(deadline, time.monotonic() + LAUNCH_FAILED_GRACE_S)
        if time.monotonic() >= deadline:
            raise client.NoMaster(f"no confabd master answers on {path}, and the one just started "
                                  "did not answer either (see ~/.confab/logs/confabd.log)") from None
        delay = min(delay * 2, 0.1)


def hook_session_end(hook_input):
    session_id, _transcript, _cwd, payload = hook_input
    message = {"type": "finish", "external_id": session_id, "wait": False, "reason": "SessionEnd"}
    try:
        inbox = append_session_end(session_id, payload)  # first: the payload survives whatever follows
    except OSError as exc:  # e.g. a full disk: hand the payload to the master instead
        err(f"hook session-end: cannot record the session end on disk ({exc.strerror or exc}); "
            "sending it to the master")
        inbox, message["hook_input"] = "(nowhere: the disk write failed)", payload
    try:
        reply, _path, _system = client.request_any(message, timeout=SESSION_END_TIMEOUT_S)
    except client.NoMaster as exc:
        leave_note_for_system_master(session_id)
        from .hostwide import autostart_refusal

        if os.path.exists(paths.state_path(sync_dir(), session_id)) and not autostart_refusal():
            client.spawn_master()  # it adopts the session and finishes it from the inbox
            raise HookError(f"{exc}; the session end is recorded in {inbox}; "
                            "started a master to finish the session") from None
        raise HookError(f"{exc}; the session end is recorded in {inbox} for the next master") from None
    except (client.ProtocolError, OSError) as exc:
        raise HookError(f"the master did not confirm ({exc}); the session end is recorded in {inbox}") from None
    if not reply.get("ok"):
        raise HookError(f"the master could not finish the session: {reply.get('error')}")


def leave_note_for_system_master(session_id):
    """Where a system master is installed, tell it (once it is back) that this user has States."""
    if not os.environ.get("CONFABD_SOCKET"):  # a master of one's own was named: nothing to tell
        from .hostwide import leave_note

        leave_note(session_id)


def sync_dir():
    home = paths.home_dir()
    if os.environ.get("CONFABD_STATE_DIR"):  # wins anyway: do not read the settings file
        return paths.sync_dir(home, os.environ)
    return paths.sync_dir(home, os.environ, client.user_settings_value(home, "state_dir"))


def utc_now():
    import time

    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def append_session_end(session_id, payload):
    """Append a session_end InboxRecord (one write on an O_APPEND fd, 0600)."""
    path = paths.inbox_path(fileio.ensure_private_dir(sync_dir()), session_id)
    record = {"type": "session_end", "timestamp": utc_now(), "hook_input": payload}
    fileio.append_line(path, client.dumps(record).encode())
    return path


def write_fallback_state(session_id, transcript, cwd, provider="claude-code", model=""):
    """A State file for a session no master took, so the next master adopts it.

    The rare path: it may import psutil to record which Claude Code (pid and
    create time) ran the hook, so the next master watches the right process.
    """
    from .parents import find_claude
    from .providers import get

    directory = fileio.ensure_private_dir(sync_dir())
    path = paths.state_path(directory, session_id)
    if os.path.exists(path):
        return path
    parent_pid, create_time = find_claude(os.getpid(), os.getppid(), claude_pid_hint(), get(provider).parent_re)
    state = {"external_id": session_id, "transcript_path": transcript, "cwd": cwd, "provider": provider,
             "inbox_path": paths.inbox_path(directory, session_id), "started_at": utc_now()}
    if provider == "claude-code" and session_config_dir(transcript):
        state["config_dir"] = session_config_dir(transcript)
    if parent_pid:  # pid too: the Go client's prompt hook and reaper take a live pid as "an uploader owns it"
        state.update(pid=parent_pid, parent_pid=parent_pid, parent_create_time=create_time)
    if model:
        state["model"] = model
    fileio.atomic_write(path, client.dumps(state).encode())
    return path


# ---------------------------------------------------------------------------
# The other commands (argparse is fine here).


if __name__ == "__main__":
    sys.exit(main())
