"""`confabctl install-hooks` / `uninstall-hooks`: edit Claude Code's settings.json.

Claude Code reads its hooks from `~/.claude/settings.json` (or
`$CLAUDE_CONFIG_DIR/settings.json`)::

    {"hooks": {"SessionStart": [{"matcher": "*", "hooks": [{"type": "command", "command":
                   "[ -x /usr/bin/confabctl ] && exec /usr/bin/confabctl hook session-start || true"}]}],
               "SessionEnd":   [{"matcher": "*", "hooks": [{"type": "command", "command":
                   "[ -x /usr/bin/confabctl ] && exec /usr/bin/confabctl hook session-end || true"}]}]}}

Claude Code runs a hook command with `/bin/sh -c`. The guard in front makes the
hook silent (exit 0, no output) once confabctl is gone, e.g. after `apt purge
confabd`: a plain `/usr/bin/confabctl hook session-end` would then make every
Claude Code session print "SessionEnd hook [...] failed: ... not found". `[` is
a shell builtin, and `exec` keeps confabctl in the shell's process (its parent
is Claude Code, as without the guard), so the guard costs nothing measurable.
A program that is not an absolute path is guarded with `command -v` instead.

Rules (behaviour.md):
- our entry goes into an existing `"matcher": "*"` group when there is one,
  else into a new `{"matcher": "*", "hooks": [...]}` group at the end;
- an old entry of ours is replaced *in place*, keeping any extra keys it had
  (e.g. a `timeout`); further duplicates of ours are dropped. Ours is the
  plain form (a command whose first word is `confabctl` or `confab`, by
  basename, or `PYTHON -m confabd.ctl`, followed by `hook session-start` /
  `hook session-end`: ours, or the Go client's) and the guarded form above
  around it; so an install upgrades a plain hook to the guarded one;
- every other setting and hook is kept, in order; a second run changes nothing
  and does not even rewrite the file;
- the write is atomic (temp file in the same directory, fsync, rename), keeps
  the file's mode (and owner, when run as root), and follows a symlinked
  settings.json to its target;
- a file that is not valid JSON (or whose top level or `hooks` is not an
  object) is refused with a message on stderr, exit 1, and left untouched;
  an empty (zero-length or blank) file counts as `{}`;
- a missing file is created (its directory with mode 0700);
- `dry_run` prints a unified diff and writes nothing.
"""

from __future__ import annotations

import difflib
import json
import os
import shlex
import sys
import tempfile
from typing import Any, Callable, List, Optional, Tuple

from . import github_links, go_compat

EVENTS: Tuple[Tuple[str, str], ...] = (
    ("SessionStart", "session-start"),
    ("UserPromptSubmit", "user-prompt-submit"),  # catches a session whose SessionStart never registered
    ("SessionEnd", "session-end"),
)
NO_MATCHER = ("UserPromptSubmit",)  # Claude Code runs these for every prompt; they take no matcher
OUR_PROGRAMS = ("confabctl", "confab")
# The Go confab CLI's `confab hook user-prompt-submit` starts an uploader of its own: replaced by ours.
OUR_ARGS = ("session-start", "session-end", "user-prompt-submit", "pre-tool-use", "post-tool-use")
# Commit and PR links (github_links.py): one entry per tool matcher, as the Go client installs them.
TOOL_EVENTS: Tuple[Tuple[str, str], ...] = (("PreToolUse", "pre-tool-use"), ("PostToolUse", "post-tool-use"))
TOOL_MATCHERS = github_links.MATCHERS


class SettingsError(Exception):
    """The settings file cannot be edited safely; nothing was written."""


def default_settings_path() -> str:
    base = os.environ.get("CLAUDE_CONFIG_DIR") or os.path.join(
        os.path.expanduser("~"), ".claude"
    )
    return os.path.join(base, "settings.json")


def hook_command(command_prefix: str, arg: str) -> str:
    """`[ -x PROGRAM ] && exec PREFIX hook ARG || true`: runs the hook, or nothing when PROGRAM is gone."""
    command_prefix = _quote_program(command_prefix)
    return f"{_guard(shlex.split(command_prefix)[0])} && exec {command_prefix} hook {arg} || true"


def _quote_program(command_prefix: str) -> str:
    """Quote the program of an unquoted prefix (`/a b/confabctl`, `/a b/python -m confabd.ctl`, as ctl
    passes them): with a space in its path it must stay one word, or the guard would test a wrong path
    and the hook would silently do nothing."""
    for suffix in ("", " -m confabd.ctl", " -I -m confabd.ctl"):
        program = command_prefix[: len(command_prefix) - len(suffix)]
        if command_prefix.endswith(suffix) and os.path.isabs(program) and os.path.isfile(program):
            return shlex.quote(program) + suffix
    return command_prefix


def _guard(program: str) -> str:
    if os.path.isabs(program):
        return f"[ -x {shlex.quote(program)} ]"
    return f"command -v {shlex.quote(program)} >/dev/null"


def _shell_words(command: str) -> List[str]:
    """Words and operators (`&&`, `||`, `>`) of a shell command line; [] when it does not parse."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:
        return []


def _is_plain_hook(words: List[str]) -> bool:
    if len(words) >= 5 and words[1:3] == ["-m", "confabd.ctl"]:  # PYTHON -m confabd.ctl hook ...
        words = words[2:]
    elif len(words) >= 6 and words[1:4] == ["-I", "-m", "confabd.ctl"]:
        words = words[3:]
    return (
        len(words) >= 3
        and os.path.basename(words[0]) in OUR_PROGRAMS + ("confabd.ctl",)
        and words[1] == "hook"
        and words[2] in OUR_ARGS
    )


def is_our_command(command: Any) -> bool:
    """True for our hook, plain (`[path/]confabctl hook session-start|session-end ...`, or the Go
    `confab`) or guarded (`[ -x PATH ] && exec PATH hook ... || true`, as `hook_command` writes it)."""
    if not isinstance(command, str):
        return False
    words = _shell_words(command)
    if _is_plain_hook(words) and not set(words) & {"&&", "||", ";", "|", "&", ">", "<"}:
        return True
    if "&&" not in words:
        return False
    split = words.index("&&")
    guard, rest = words[:split], words[split + 1:]
    if rest[:1] != ["exec"] or rest[-2:] != ["||", "true"]:
        return False
    hook = rest[1:-2]
    return _is_plain_hook(hook) and guard == _shell_words(_guard(hook[0])) and "&&" not in hook


def hook_program(command: str) -> str:
    """The program one of our hook commands runs (`PYTHON` of `PYTHON -m confabd.ctl`); "" if not ours."""
    if not is_our_command(command):
        return ""
    words = _shell_words(command)
    if "&&" in words:  # guarded: [ -x PROGRAM ] && exec PROGRAM hook ... || true
        words = words[words.index("&&") + 2:]
    return words[0]


def _is_our_entry(entry: Any, keep_go: bool = False) -> bool:
    command = entry.get("command") if isinstance(entry, dict) else None
    return is_our_command(command) and not (keep_go and go_compat.is_go_command(command))


def _event_groups(hooks: dict, event: str, create: bool) -> Optional[list]:
    groups = hooks.get(event)
    if groups is None:
        if not create:
            return None
        groups = []
        hooks[event] = groups
    if not isinstance(groups, list):
        raise SettingsError(f'"hooks.{event}" is not a list')
    return groups


def _our_positions(groups: list, keep_go: bool = False) -> List[Tuple[int, int]]:
    found = []
    for gi, group in enumerate(groups):
        if isinstance(group, dict) and isinstance(group.get("hooks"), list):
            for hi, entry in enumerate(group["hooks"]):
                if _is_our_entry(entry, keep_go):
                    found.append((gi, hi))
    return found


def _drop_entries(groups: list, positions: List[Tuple[int, int]]) -> None:
    """Remove the given entries; a group we emptied goes too."""
    for gi, hi in sorted(positions, reverse=True):
        del groups[gi]["hooks"][hi]
    for gi in sorted({gi for gi, _ in positions}, reverse=True):
        if not groups[gi]["hooks"]:
            del groups[gi]


def add_hooks(settings: dict, command_prefix: str = "confabctl", keep_confab: bool = False) -> dict:
    """Return a copy of `settings` with our hooks in place (one per event of EVENTS).

    The Go client's hook of an event of ours is replaced in place, as ours; with
    `keep_confab` its prompt hook stays beside ours (its session hooks never do:
    go_compat.py says why)."""
    settings = json.loads(json.dumps(settings))  # deep copy, order kept
    hooks = settings.setdefault("hooks", {})
    if not isinstance(hooks, dict):
        raise SettingsError('"hooks" is not an object')
    for event, arg in EVENTS:
        command = hook_command(command_prefix, arg)
        groups = _event_groups(hooks, event, create=True)
        found = _our_positions(groups, keep_confab and event not in go_compat.GO_UPLOADER_EVENTS)
        if found:
            gi, hi = found[0]
            entry = groups[gi]["hooks"][hi]
            entry["type"] = "command"
            entry["command"] = command
            _drop_entries(groups, found[1:])
            continue
        entry = {"type": "command", "command": command}
        matcher = None if event in NO_MATCHER else "*"
        for group in groups:
            if (
                isinstance(group, dict)
                and group.get("matcher") == matcher
                and isinstance(group.get("hooks"), list)
            ):
                group["hooks"].append(entry)
                break
        else:
            groups.append({"hooks": [entry]} if matcher is None else {"matcher": "*", "hooks": [entry]})
    for event, arg in TOOL_EVENTS:
        for matcher in TOOL_MATCHERS:
            _add_tool_hook(_event_groups(hooks, event, create=True), matcher, hook_command(command_prefix, arg),
                           keep_confab)
    # What is left of the Go client's in our events (an old `confab sync start`, a second copy) would
    # start or stop its own uploader beside ours (or make a second link).
    go_compat.drop_go_hooks(settings, [event for event, _ in EVENTS + TOOL_EVENTS
                                       if not (keep_confab and event not in go_compat.GO_UPLOADER_EVENTS)])
    return settings


def _add_tool_hook(groups: list, matcher: str, command: str, keep_confab: bool) -> None:
    """Ours in the group of `matcher` (replacing an older one, or the Go client's, in place); with
    `keep_confab` a group holding the Go client's hook keeps it and gets none of ours (one link, not two)."""
    group = next((g for g in groups if isinstance(g, dict) and g.get("matcher") == matcher
                  and isinstance(g.get("hooks"), list)), None)
    if group is None:
        groups.append({"matcher": matcher, "hooks": [{"type": "command", "command": command}]})
        return
    entries = group["hooks"]
    if keep_confab and any(go_compat.is_go_entry(e) for e in entries):
        return
    ours = [i for i, e in enumerate(entries) if _is_our_entry(e, keep_confab)]
    if not ours:
        entries.append({"type": "command", "command": command})
        return
    entries[ours[0]]["type"] = "command"
    entries[ours[0]]["command"] = command
    for i in reversed(ours[1:]):
        del entries[i]


def remove_hooks(settings: dict) -> dict:
    """Return a copy of `settings` without our hooks (nothing else changes)."""
    settings = json.loads(json.dumps(settings))
    hooks = settings.get("hooks")
    if hooks is None:
        return settings
    if not isinstance(hooks, dict):
        raise SettingsError('"hooks" is not an object')
    touched = False
    for event, _ in EVENTS + TOOL_EVENTS:
        groups = _event_groups(hooks, event, create=False)
        if not groups:
            continue
        found = _our_positions(groups)
        if found:
            touched = True
            _drop_entries(groups, found)
            if not groups:
                del hooks[event]
    if touched and not hooks:
        del settings["hooks"]
    return settings


# --- file handling -----------------------------------------------------------

def _read(path: str) -> Tuple[Optional[str], dict]:
    """(original text or None when missing, parsed object)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None, {}
    except UnicodeDecodeError as e:
        raise SettingsError(f"{path} is not valid UTF-8: {e}") from None
    except OSError as e:
        raise SettingsError(f"cannot read {path}: {e.strerror or e}") from None
    if not text.strip():
        return text, {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SettingsError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
            "fix it by hand, nothing was changed"
        ) from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: the top level is not a JSON object; nothing was changed")
    return text, data


def _dump(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _atomic_write(path: str, text: str, existed: bool) -> None:
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.stat(path) if existed else None
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if st is not None:
                os.fchmod(f.fileno(), st.st_mode & 0o7777)
                if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
            else:
                os.fchmod(f.fileno(), 0o600)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _edit(
    settings_file: Optional[str],
    change: Callable[[dict], dict],
    dry_run: bool,
    out,
    verb: str,
) -> int:
    path = settings_file or default_settings_path()
    # Edit the target of a symlinked settings.json, not the link itself.
    real = os.path.realpath(path)
    try:
        old_text, data = _read(real)
        new_data = change(data)
    except SettingsError as e:
        print(f"confabctl: {e}", file=sys.stderr)
        return 1
    if old_text is not None and new_data == data:
        print(f"{path}: hooks already {verb}, nothing to do", file=out)
        return 0
    if old_text is None and not new_data:
        print(f"{path}: no such file, nothing to do", file=out)
        return 0
    new_text = _dump(new_data)
    if dry_run:
        diff = difflib.unified_diff(
            (old_text or "").splitlines(keepends=True),
            new_text.splitlines(keepends=True),
            fromfile=path if old_text is not None else "/dev/null",
            tofile=path,
        )
        out.writelines(diff)
        print(f"(dry run: {path} not written)", file=out)
        return 0
    try:
        _atomic_write(real, new_text, existed=old_text is not None)
    except OSError as e:
        print(f"confabctl: cannot write {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"{path}: hooks {verb}", file=out)
    return 0


def install_hooks(
    settings_file: Optional[str],
    command_prefix: str = "confabctl",
    dry_run: bool = False,
    out=None,
    keep_confab: bool = False,
) -> int:
    """Add (or update in place) our hooks, saying what becomes of the Go CLI's. Returns an exit code."""
    out = out if out is not None else sys.stdout

    def change(data: dict) -> dict:
        new = add_hooks(data, command_prefix, keep_confab)
        _report_go_hooks(go_compat.find_go_hooks(data), go_compat.find_go_hooks(new), keep_confab, out)
        return new

    return _edit(settings_file, change, dry_run, out, "installed")


def _report_go_hooks(before: list, after: list, keep_confab: bool, out) -> None:
    """One line per hook of the Go confab CLI found: replaced by ours, removed, or kept."""
    ours = {event for event, _ in EVENTS + TOOL_EVENTS}
    for hook in before:
        if hook in after:
            fate = "kept"
        elif hook.event in ours:
            fate = "replaced by confabd's"
        else:
            fate = "removed"
        print(f"confab CLI hook {go_compat.describe(hook)}: {fate}", file=out)
    if keep_confab and after:
        print(go_compat.KEEP_WARNING, file=sys.stderr)


def uninstall_hooks(settings_file: Optional[str], dry_run: bool = False, out=None) -> int:
    """Remove our hooks, leaving everything else. Returns an exit code."""
    return _edit(
        settings_file,
        remove_hooks,
        dry_run,
        out if out is not None else sys.stdout,
        "removed",
    )
