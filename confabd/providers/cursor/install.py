"""`confabctl install-hooks --provider cursor`: sessionStart and sessionEnd in ~/.cursor/hooks.json.

The file is JSON (`{"version": 1, "hooks": {"<event>": [{"command": ..., "type": "command"}]}}`):
everything else in it is kept, `version` is set only when absent. Our entry for an event replaces
an older one of ours and the Go confab client's (`... hook session-start --provider cursor`): two
uploaders for one session would race. Uninstall removes exactly those entries (and an event left
empty). Atomic, 0600.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import tempfile

from . import paths

EVENTS = {"sessionStart": "session-start", "sessionEnd": "session-end"}


def hooks_path(env=None, home: str = "") -> str:
    return os.path.join(paths.cursor_dir(env, home), "hooks.json")


def _ours(entry: object, arg: str) -> bool:
    command = entry.get("command") if isinstance(entry, dict) else None
    return isinstance(command, str) and f"hook {arg} --provider cursor" in command


def _load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return {}
    data = json.loads(text) if text.strip() else {}
    if not isinstance(data, dict) or not isinstance(data.get("hooks", {}), dict):
        raise ValueError("not a JSON object with a \"hooks\" object")
    return data


def installed(data: dict, command_prefix: str) -> dict:
    from ...hooks_install import hook_command

    data = json.loads(json.dumps(data))
    data.setdefault("version", 1)
    hooks = data.setdefault("hooks", {})
    for event, arg in EVENTS.items():
        entries = [e for e in hooks.get(event, []) if not _ours(e, arg)] if isinstance(hooks.get(event), list) else []
        entries.append({"command": hook_command(command_prefix, f"{arg} --provider cursor"), "type": "command"})
        hooks[event] = entries
    return data


def uninstalled(data: dict) -> dict:
    data = json.loads(json.dumps(data))
    hooks = data.get("hooks", {})
    for event, arg in EVENTS.items():
        if isinstance(hooks.get(event), list):
            kept = [e for e in hooks[event] if not _ours(e, arg)]
            if kept:
                hooks[event] = kept
            else:
                del hooks[event]
    return data


def _apply(path: str, change, dry_run: bool, what: str) -> int:
    try:
        old = _load(path)
    except (OSError, ValueError) as exc:
        print(f"confabctl: cannot read {path}: {exc}; left as it is", file=sys.stderr)
        return 1
    new = change(old)
    if new == old and (os.path.exists(path) or not new):  # nothing to remove from a missing file
        print(f"{path}: {what} already")
        return 0
    text = json.dumps(new, indent=2) + "\n"
    if dry_run:
        before = json.dumps(old, indent=2) + "\n" if old else ""
        sys.stdout.writelines(difflib.unified_diff(before.splitlines(True), text.splitlines(True), path, path))
        return 0
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".hooks.json.", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"{path}: {what}")
    return 0


def install(path: str | None, command_prefix: str, dry_run: bool = False) -> int:
    return _apply(os.path.abspath(path or hooks_path()), lambda d: installed(d, command_prefix), dry_run,
                  "the Cursor sessionStart and sessionEnd hooks are installed")


def uninstall(path: str | None, dry_run: bool = False) -> int:
    return _apply(os.path.abspath(path or hooks_path()), uninstalled, dry_run, "no confabd Cursor hooks")
