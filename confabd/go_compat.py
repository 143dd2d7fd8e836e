"""Living beside the Go confab CLI: its hooks in settings.json, and what its tools read in our State.

The Go client (github.com/ConfabulousDev/confab) shares `~/.confab/sync` with
us: our State is its legacy flat-path State (`sync/<id>.json`), which its
`LoadStateForProvider("claude-code", id)` falls back to (`pkg/daemon/state.go`).
Two of its rules act on that file:

- its prompt hook (`cmd/hook_userpromptsubmit.go` -> `maybeSpawnDaemon`,
  `cmd/spawn.go`) starts an uploader of its own unless the State's `pid`
  answers `kill(pid, 0)` (`isProcessRunning`: EPERM counts as dead);
- its reaper (`pkg/daemon/reaper.go`, run by its session-start hook) deletes
  a State and its `inbox_path` when `started_at` is older than 5 s and `pid`
  is not running.

So the `pid` we write names a live process of the session's user for as long
as the session can see a prompt: its Claude Code process (alive through a
worker's crash backoff and while the master is stopped, and the only process
from which a prompt hook can run), else, once Claude Code is gone or the
session is finishing, the worker doing the final sync. Go's session-end hook
would send SIGTERM to that pid, so `install-hooks` always replaces the Go
session hooks.
"""

from __future__ import annotations

import os
from typing import Any, List, NamedTuple

from .text import printable

GO_PROGRAM = "confab"
# The events the Go client installs hooks for (pkg/hookconfig/claude.go).
GO_EVENTS = ("SessionStart", "SessionEnd", "UserPromptSubmit", "PreToolUse", "PostToolUse")
# Its session hooks start and stop its uploader: never kept beside ours.
GO_UPLOADER_EVENTS = ("SessionStart", "SessionEnd")


class GoHook(NamedTuple):
    event: str
    matcher: str  # "" when the group has none
    command: str


def is_go_command(command: Any) -> bool:
    """The Go client's own test (`isConfabCommand`): the first word's basename is `confab`."""
    if not isinstance(command, str):
        return False
    words = command.split()
    return bool(words) and os.path.basename(words[0]) == GO_PROGRAM


def _entries(settings: dict, event: str):
    """(group, index, entry) of every hook entry under `event`, tolerating odd shapes as Go does."""
    hooks = settings.get("hooks")
    groups = hooks.get(event) if isinstance(hooks, dict) else None
    if not isinstance(groups, list):
        return
    for group in groups:
        if isinstance(group, dict) and isinstance(group.get("hooks"), list):
            for index, entry in enumerate(group["hooks"]):
                yield group, index, entry


def is_go_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("type") == "command" and is_go_command(entry.get("command"))


def find_go_hooks(settings: dict, events=GO_EVENTS) -> List[GoHook]:
    found = []
    for event in events:
        for group, _, entry in _entries(settings, event):
            if is_go_entry(entry):
                matcher = group.get("matcher")
                found.append(GoHook(event, matcher if isinstance(matcher, str) else "", entry["command"]))
    return found


def drop_go_hooks(settings: dict, events) -> None:
    """Remove the Go hooks of `events` in place; a group left empty goes, and an event left empty."""
    hooks = settings.get("hooks")
    if not isinstance(hooks, dict):
        return
    for event in events:
        groups = hooks.get(event)
        if not isinstance(groups, list):
            continue
        for group in groups:
            if isinstance(group, dict) and isinstance(group.get("hooks"), list):
                group["hooks"] = [e for e in group["hooks"] if not is_go_entry(e)]
        kept = [g for g in groups if not (isinstance(g, dict) and g.get("hooks") == [])]
        if len(kept) != len(groups):
            if kept:
                hooks[event] = kept
            else:
                del hooks[event]


def describe(hook: GoHook) -> str:
    where = f"{hook.event}[{hook.matcher}]" if hook.matcher else hook.event
    return f"{where}: {printable(hook.command)}"


KEEP_WARNING = (
    "confabctl: warning: --keep-confab leaves the confab CLI's prompt and tool-use hooks. Its prompt hook "
    "starts its own uploader for a session confabd does not hold yet (one open before the hooks were "
    "installed, a teleport): on that session's first prompt both register it, and it is uploaded twice. "
    "Its tool-use hooks add the commit and PR links instead of confabd's. Its session hooks are replaced "
    "all the same: beside confabd's they would start a second uploader on every session."
)


# -- the State's pid ------------------------------------------------------------


def state_pid(parent_pid: int, parent_create_time: float, finishing: bool, own_pid: int) -> int:
    """The pid a State should carry for the Go client's liveness test (see the module's docstring)."""
    if parent_pid and not finishing and _same_process(parent_pid, parent_create_time):
        return parent_pid
    return own_pid


def _same_process(pid: int, create_time: float) -> bool:
    if not create_time:  # unknown identity (a State of the Go client's): trust the pid alone
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    from .parents import same_process

    return same_process(pid, create_time)
