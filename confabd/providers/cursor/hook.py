"""`confabctl hook session-start|session-end --provider cursor`: Cursor's hook input, read.

Cursor's sessionStart says `session_id`, `workspace_roots`, `model` and (so far) a null
`transcript_path`: the transcript's path is derived from the first workspace root. Its sessionEnd
says why (`reason`: completed, aborted, error, window_close, user_close), which becomes the
`session_end` event's payload in the shape the backend knows from Claude Code. Stdlib only.
"""

from __future__ import annotations

import os

from . import paths

RESPONSE = "{}"  # Cursor's hooks expect a JSON object; nothing to say
MAX_MODEL = 255  # the server's limit (a longer one is cut, never refused)


class BadInput(ValueError):
    pass


def _root(payload: dict) -> str:
    roots = payload.get("workspace_roots")
    if isinstance(roots, list) and roots and isinstance(roots[0], str) and os.path.isabs(roots[0]):
        return roots[0]
    return ""


def transcript_of(payload: dict, env=None, home: str = "") -> str:
    given = payload.get("transcript_path")
    if isinstance(given, str) and given:
        if not os.path.isabs(given) or "/../" in given + "/":
            raise BadInput(f"transcript_path {given!r} is not an absolute path")
        return given
    root = _root(payload)
    if not root:
        raise BadInput("neither transcript_path nor an absolute workspace_roots[0]: cannot tell where "
                       "the transcript is")
    return paths.transcript_path(paths.cursor_dir(env, home), root, payload["session_id"])


def announce(payload: dict, env=None, home: str = "") -> tuple[str, str, str, str]:
    """(session id, transcript path, cwd, model) of a sessionStart (session_id already checked)."""
    model = payload.get("model") if isinstance(payload.get("model"), str) else ""
    return payload["session_id"], transcript_of(payload, env, home), _root(payload), model[:MAX_MODEL]


def end_payload(payload: dict, transcript: str) -> dict:
    """The session_end payload: Claude Code's SessionEnd shape, with Cursor's reason."""
    reason = payload.get("reason") if isinstance(payload.get("reason"), str) else ""
    return {"session_id": payload["session_id"], "transcript_path": transcript, "cwd": "", "permission_mode": "",
            "hook_event_name": "SessionEnd", "reason": reason or "other"}
