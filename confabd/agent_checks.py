"""`confabctl doctor`'s checks of Codex's, Cursor's and OpenCode's hooks (Claude Code's: doctor.py).

For each agent found on this machine (providers/detect.py): is our hook (or plugin) there, and does
the program it runs exist? A hook whose confabctl is gone does nothing, silently. Codex also runs a
hook only when `[features] hooks = true` and its trust hash is the one for its command and place.
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable


from .doctor import Check, _runnable


def _program_check(label: str, what: str, program: str, provider: str) -> Check:
    if not _runnable(program):
        return Check("FAIL", f"hooks: {label} {what} calls {program}, which is not there (the hook does nothing)",
                     f"confabctl install-hooks --provider {provider}, from the confabctl you use now")
    return Check("ok", f"hooks: {label} {what} calls {program}")


def codex_checks() -> list[Check]:
    from .hooks_install import hook_program
    from .providers.codex import install

    path = install.config_path()
    todo = "confabctl install-hooks --provider codex"
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        return [Check("FAIL", f"hooks: Codex: cannot read {path} ({exc})", "fix the file, then " + todo)]
    block = re.search(re.escape(install.BEGIN) + r"\n(.*?)" + re.escape(install.END), text, re.S)
    if not block:
        return [Check("FAIL", f"hooks: Codex: no SessionStart hook of ours in {path}", todo)]
    command = re.search(r'(?m)^command = (".*")$', block.group(1))
    trusted = re.search(r'(?m)^\[hooks\.state\.(".*")\]\ntrusted_hash = (".*")$', block.group(1))
    command_text, key, digest = "", "", ""
    try:
        command_text = json.loads(command.group(1)) if command else ""
        key, digest = (json.loads(trusted.group(1)), json.loads(trusted.group(2))) if trusted else ("", "")
    except ValueError:
        pass
    program = hook_program(command_text) if command_text else ""
    if not program:
        return [Check("FAIL", f"hooks: Codex: the confabd block in {path} is damaged", todo)]
    index = len(install._GROUP.findall(text[: block.start()]))
    if digest != install.trusted_hash(command_text) or key != f"{path}:session_start:{index}:0":
        return [Check("FAIL", f"hooks: Codex: the SessionStart hook in {path} is not trusted as written "
                              "(Codex skips it)", todo)]
    if install.hooks_feature_on(text) != text:
        return [Check("FAIL", f"hooks: Codex: [features] hooks is not true in {path} (Codex runs no hook)", todo)]
    return [_program_check("Codex", "SessionStart", program, "codex")]


def cursor_checks() -> list[Check]:
    from .hooks_install import hook_program
    from .providers.cursor import install

    path = install.hooks_path()
    todo = "confabctl install-hooks --provider cursor"
    try:
        data = install._load(path)
    except (OSError, ValueError) as exc:
        return [Check("FAIL", f"hooks: Cursor: cannot read {path} ({exc})", "fix the file, then " + todo)]
    checks = []
    for event, arg in install.EVENTS.items():
        entries = (data.get("hooks") or {}).get(event)
        ours = [e["command"] for e in entries if install._ours(e, arg)] if isinstance(entries, list) else []
        program = hook_program(ours[0]) if ours else ""
        if not program:
            checks.append(Check("FAIL", f"hooks: Cursor: no {event} hook of ours in {path}", todo))
        else:
            checks.append(_program_check("Cursor", event, program, "cursor"))
    return checks


def opencode_checks() -> list[Check]:
    from .providers.opencode import install

    path = os.path.join(install.config_dir(), "plugins", install.PLUGIN)
    todo = "confabctl install-hooks --provider opencode"
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return [Check("FAIL", f"hooks: OpenCode: no confabd plugin ({path})", todo)]
    except (OSError, UnicodeDecodeError) as exc:
        return [Check("FAIL", f"hooks: OpenCode: cannot read {path} ({exc})", todo)]
    argv = re.search(r"(?m)^const CONFABCTL: string\[\] = (\[.*\])$", text)
    try:
        words = json.loads(argv.group(1)) if argv else []
    except ValueError:
        words = []
    if not words or not isinstance(words[0], str):
        return [Check("FAIL", f"hooks: OpenCode: the plugin {path} is not one confabd wrote", todo)]
    return [_program_check("OpenCode", "plugin", words[0], "opencode")]


CHECKS: dict[str, Callable[[], list[Check]]] = {
    "codex": codex_checks, "cursor": cursor_checks, "opencode": opencode_checks}


def agent_checks(found: list[str]) -> list[Check]:
    """The hook checks of every agent in `found` that is not Claude Code."""
    return [check for name in found if name in CHECKS for check in CHECKS[name]()]
