"""`confabctl hook session-start|session-end --provider opencode`: what the confabd plugin announces.

OpenCode has no settings hooks: the plugin (install.py) pipes `{"session_id", "cwd", "parent_pid",
"parent_id"?}` to session-start on `session.created` and on the reconcile events (a resumed
session), and `{"session_id"}` to session-end when OpenCode disposes of it. A child session (a
subagent's) is not a session of its own: its root's worker ships it. Its transcript is the file the
root's collector writes, `~/.confab/opencode/<id>/messages.jsonl`. Stdlib only.
"""

from __future__ import annotations

import json
import os

from .db import OpenCodeDB, db_path

RESPONSE = ""  # the plugin reads nothing


class Skip(Exception):
    pass


def messages_path(home: str, session_id: str) -> str:
    return os.path.join(home, ".confab", "opencode", session_id, "messages.jsonl")


SOURCE = "source.json"  # beside messages.jsonl: which database it is collected from


def remember_source(transcript: str, database: str) -> None:
    """The database OpenCode's environment names, for the worker (which does not have that environment)."""
    directory = os.path.dirname(transcript)
    for path in (os.path.dirname(os.path.dirname(directory)), os.path.dirname(directory), directory):
        os.makedirs(path, mode=0o700, exist_ok=True)  # each level: makedirs' mode is the leaf's only
    tmp = os.path.join(directory, f".{SOURCE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"db": database}, fh)
    os.replace(tmp, os.path.join(directory, SOURCE))


def source_of(transcript: str) -> str:
    try:
        with open(os.path.join(os.path.dirname(transcript), SOURCE)) as fh:
            database = json.load(fh).get("db")
    except (OSError, ValueError, AttributeError):
        return db_path()
    return database if isinstance(database, str) and os.path.isabs(database) else db_path()


def announce(payload: dict, env=None, home: str = "") -> tuple[str, str, str, int]:
    """(session id, messages.jsonl path, cwd, OpenCode's pid) of a root session's start."""
    home = home or os.path.expanduser("~")
    session_id = payload["session_id"]
    cwd = payload.get("cwd") if isinstance(payload.get("cwd"), str) else ""
    parent = payload.get("parent_id") if isinstance(payload.get("parent_id"), str) else ""
    if not cwd or not parent:
        row = OpenCodeDB(db_path(env, home)).session(session_id)  # a reconcile event says only the id
        if row:
            cwd, parent = cwd or row[0], parent or row[1]
    if parent:
        raise Skip(f"session {session_id} is a child of {parent}: shipped with its root session")
    pid = payload.get("parent_pid")
    transcript = messages_path(home, session_id)
    remember_source(transcript, os.path.abspath(db_path(env, home)))
    return session_id, transcript, cwd, pid if isinstance(pid, int) and pid > 1 else 0
