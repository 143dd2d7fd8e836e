"""Finding a session's subagent transcripts.

Claude Code names a subagent in the parent's lines (`toolUseResult.agentId`,
or the same inside a tool_result block); its transcript is
`agent-<agentId>.jsonl`, either beside the main transcript (older releases) or
in `<transcript without .jsonl>/subagents/` (newer). Agent files can name
further agents, so discovery runs over every tracked file's new lines.
The `subagents/` dir is also scanned, which finds files again after a restart
even when the lines that named them were synced long ago.
"""

from __future__ import annotations

import os
import re
from typing import Optional

# Matches only a real `"agentId": "<id>"` key of a JSON object in the raw line
# (inside an escaped string the quotes are `\"`, which this does not match).
AGENT_ID_KEY = b'"agentId"'
AGENT_ID_RE = re.compile(rb'"agentId"\s*:\s*"([A-Za-z0-9_-]{6,128})"')
AGENT_FILE_RE = re.compile(r"agent-([A-Za-z0-9_-]{6,128})\.jsonl\Z")


def agent_ids_in(text: bytes) -> set[str]:
    """Agent IDs named in `text` (a batch of lines joined by newlines).

    bytes.find jumps from one `"agentId"` to the next at memory speed; the
    regex only confirms each hit (a regex scan would stop at every `"`).
    """
    found: set[str] = set()
    pos = text.find(AGENT_ID_KEY)
    while pos >= 0:
        match = AGENT_ID_RE.match(text, pos)
        if match:
            found.add(match.group(1).decode("ascii"))
        pos = text.find(AGENT_ID_KEY, pos + len(AGENT_ID_KEY))
    return found


def agent_file_name(agent_id: str) -> str:
    return f"agent-{agent_id}.jsonl"


class SubagentLocator:
    """Knows the two layouts around one main transcript."""

    def __init__(self, transcript_path: str):
        self.project_dir = os.path.dirname(transcript_path)
        stem = transcript_path[: -len(".jsonl")] if transcript_path.endswith(".jsonl") else transcript_path
        self.subagents_dir = os.path.join(stem, "subagents")

    def locate(self, file_name: str) -> Optional[str]:
        """Path of an agent file by name, newer layout first; None if neither exists."""
        for directory in (self.subagents_dir, self.project_dir):
            path = os.path.join(directory, file_name)
            if os.path.isfile(path):
                return path
        return None

    def scan(self) -> dict[str, str]:
        """Every `agent-*.jsonl` in the session's own `subagents/` dir: {file name: path}.

        The project dir is shared by all sessions of that directory, so its
        agent files are taken only when named (see `locate`).
        """
        try:
            names = os.listdir(self.subagents_dir)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return {}
        return {
            name: os.path.join(self.subagents_dir, name)
            for name in sorted(names)
            if AGENT_FILE_RE.match(name)
        }
