"""Where Cursor keeps its agent transcripts (stdlib only: the hook uses it).

- The Cursor dir: `CONFAB_CURSOR_DIR`, else `~/.cursor`.
- A session's transcript: `<cursor dir>/projects/<workspace root, every run of non-alphanumerics
  as "-", trimmed>/agent-transcripts/<id>/<id>.jsonl`; its subagents in `subagents/` beside it.
- The CLI's chat metadata (the title): `<cursor dir>/chats/<hash>/<id>/meta.json`.
"""

from __future__ import annotations

import os
import re

_RUNS = re.compile(r"[^a-zA-Z0-9]+")


def cursor_dir(env=None, home: str = "") -> str:
    env = os.environ if env is None else env
    chosen = env.get("CONFAB_CURSOR_DIR")
    return os.path.abspath(chosen) if chosen else os.path.join(home or os.path.expanduser("~"), ".cursor")


def project_name(workspace_root: str) -> str:
    return _RUNS.sub("-", workspace_root).strip("-")


def transcript_path(directory: str, workspace_root: str, session_id: str) -> str:
    return os.path.join(directory, "projects", project_name(workspace_root), "agent-transcripts", session_id,
                        session_id + ".jsonl")


def cursor_dir_of(transcript: str) -> str:
    """The Cursor dir of a transcript (the parent of its `projects` dir), "" if it is not under one."""
    parts = transcript.split(os.sep)
    if len(parts) >= 6 and parts[-3] == "agent-transcripts" and parts[-5] == "projects":
        return os.sep.join(parts[:-5])
    return ""
