"""`confabctl install-hooks --provider codex`: the SessionStart hook in Codex's config.toml.

Codex runs a hook from config.toml only when `[features] hooks = true` and the hook's trust hash is
recorded under `[hooks.state."<config path>:session_start:<group index>:0"]`: `sha256:` and the hex
SHA-256 of the compact JSON {"event_name","hooks":[{"async","command","statusMessage","timeout",
"type"}],"matcher"} in that key order (providers.md §3.6; codex 0.171.0 silently skips a hook whose
hash is off by one digit). Our hook and its trust entry are one managed block between markers, so
install replaces it and uninstall cuts it; the rest of the file is edited only to switch
`features.hooks` on, as text (no TOML re-serialisation: the user's comments and layout stay). The
Go confab client's block (its markers) is replaced too: two uploaders for one session would race.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import sys
import tempfile

from . import rollouts

BEGIN, END = "# >>> confabd codex hooks >>>", "# <<< confabd codex hooks <<<"
GO_BEGIN, GO_END = "# >>> confab codex hooks >>>", "# <<< confab codex hooks <<<"
# Every start that may begin or continue a session: a fork is a session of its own (a new rollout),
# compact the same one (a no-op while its worker runs). The Go client's "startup|resume|clear" misses forks.
MATCHER = "startup|resume|clear|fork|compact"
STATUS_MESSAGE = "Starting confabd sync"
TIMEOUT_S = 600  # Codex's default, part of the hash
_GROUP = re.compile(r"^\s*\[\[\s*hooks\.SessionStart\s*\]\]\s*(?:#.*)?$", re.M)


def config_path(env=None, home: str = "") -> str:
    return os.path.join(rollouts.codex_dir(env, home), "config.toml")


def trusted_hash(command: str, event: str = "session_start", matcher: str = MATCHER,
                 status_message: str = STATUS_MESSAGE) -> str:
    ident = {"event_name": event,
             "hooks": [{"async": False, "command": command, "statusMessage": status_message,
                        "timeout": TIMEOUT_S, "type": "command"}],
             "matcher": matcher}
    data = json.dumps(ident, separators=(",", ":"), ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a TOML basic string is JSON's, for what we write


def cut_block(text: str, begin: str, end: str) -> str:
    pattern = re.compile(r"\n*^" + re.escape(begin) + r"$.*?^" + re.escape(end) + r"$\n?", re.M | re.S)
    return pattern.sub("\n", text)


def without_ours(text: str) -> str:
    return cut_block(cut_block(text, BEGIN, END), GO_BEGIN, GO_END)


def hooks_feature_on(text: str) -> str:
    """`[features] hooks = true`, switched on where the user keeps [features] (old `codex_hooks` dropped)."""
    text = re.sub(r"(?m)^\s*codex_hooks\s*=.*\n?", "", text)
    features = re.search(r"(?m)^\s*\[features\]\s*(?:#.*)?$", text)
    if features:
        section_end = re.compile(r"(?m)^\s*\[").search(text, features.end())
        stop = section_end.start() if section_end else len(text)
        body = text[features.end():stop]
        setting = re.search(r"(?m)^\s*hooks\s*=\s*(\S+)", body)
        if setting:
            if setting.group(1) == "true":
                return text
            start = features.end() + setting.start(1)
            return text[:start] + "true" + text[features.end() + setting.end(1):]
        return text[:features.end()] + "\nhooks = true" + text[features.end():]
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + "[features]\nhooks = true\n"


def installed_text(text: str, path: str, command: str) -> str:
    text = hooks_feature_on(without_ours(text)).rstrip("\n")
    index = len(_GROUP.findall(text))  # ours comes after the user's own SessionStart groups
    block = "\n".join([
        BEGIN,
        "[[hooks.SessionStart]]",
        f"matcher = {toml_string(MATCHER)}",
        "[[hooks.SessionStart.hooks]]",
        'type = "command"',
        f"command = {toml_string(command)}",
        f"statusMessage = {toml_string(STATUS_MESSAGE)}",
        "",
        f"[hooks.state.{toml_string(f'{path}:session_start:{index}:0')}]",
        f"trusted_hash = {toml_string(trusted_hash(command))}",
        END,
    ])
    return (text + "\n\n" if text else "") + block + "\n"


def uninstalled_text(text: str) -> str:
    out = without_ours(text).rstrip("\n")
    return out + "\n" if out else ""


def _write(path: str, text: str) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config.toml.", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def _apply(path: str, new: str, dry_run: bool, what: str) -> int:
    old = _read(path)
    if old == new:
        print(f"{path}: {what} already")
        return 0
    if dry_run:
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), path, path))
        return 0
    _write(path, new)
    print(f"{path}: {what}")
    return 0


def install(path: str | None, command_prefix: str, dry_run: bool = False) -> int:
    from ...hooks_install import hook_command

    path = os.path.abspath(path or config_path())
    command = hook_command(command_prefix, "session-start --provider codex")
    try:
        return _apply(path, installed_text(_read(path), path, command), dry_run, "the Codex SessionStart hook is installed")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"confabctl: cannot install the Codex hook in {path}: {exc}", file=sys.stderr)
        return 1


def uninstall(path: str | None, dry_run: bool = False) -> int:
    path = os.path.abspath(path or config_path())
    try:
        return _apply(path, uninstalled_text(_read(path)), dry_run, "no confabd Codex hook")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"confabctl: cannot edit {path}: {exc}", file=sys.stderr)
        return 1
