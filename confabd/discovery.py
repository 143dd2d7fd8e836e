"""Finding a session's subagent transcripts.

Claude Code names a subagent in the parent's lines (`toolUseResult.agentId`,
or the same inside a tool_result block); its transcript is
`agent-<agentId>.jsonl`, either beside the main transcript (older releases) or
in `<transcript without .jsonl>/subagents/` (newer). Agent files can name
further agents, so discovery runs over every tracked file's new lines.
The `subagents/` dir is also scanned, which finds files again after a restart
even when the lines that named them were synced long ago.

File names also come from the backend (init's `files`), which is not trusted:
a name is used only when it is one this client would send itself
(`agent-<id>.jsonl`, a base name), and only a regular file (not a symlink) in
one of the session's two directories is ever opened for it.
"""

from __future__ import annotations

import os
import re
import stat
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


def is_agent_file_name(name: str) -> bool:
    """Whether `name` is an agent file name this client itself sends: `agent-<id>.jsonl`, no path."""
    return isinstance(name, str) and AGENT_FILE_RE.match(name) is not None


def _regular_file(path: str) -> bool:
    """A regular file, not a symlink to one (which could point anywhere the user can read)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class SubagentLocator:
    """Knows the two layouts around one main transcript."""

    def __init__(self, transcript_path: str):
        self.project_dir = os.path.dirname(transcript_path)
        self.stem = transcript_path[: -len(".jsonl")] if transcript_path.endswith(".jsonl") else transcript_path
        self.subagents_dir = os.path.join(self.stem, "subagents")

    def directories(self) -> tuple[str, ...]:
        """The session's own directories that exist: `subagents/` (unless it, or the
        session's dir, is a symlink leading elsewhere), then the project dir."""
        dirs = []
        try:
            if not os.path.islink(self.stem) and stat.S_ISDIR(os.lstat(self.subagents_dir).st_mode):
                dirs.append(self.subagents_dir)
        except OSError:
            pass
        dirs.append(self.project_dir)
        return tuple(dirs)

    def locate(self, file_name: str) -> Optional[str]:
        """Path of an agent file by name, newer layout first; None if neither holds
        it, or if the name is not an agent file name (a path, `..`, anything else)."""
        if not is_agent_file_name(file_name):
            return None
        for directory in self.directories():
            path = os.path.join(directory, file_name)
            if _regular_file(path):
                return path
        return None

    def owns(self, file_name: str, path: str) -> bool:
        """Whether `path` is where this session keeps the agent file `file_name`."""
        return is_agent_file_name(file_name) and path in (
            os.path.join(self.subagents_dir, file_name), os.path.join(self.project_dir, file_name))

    def scan(self) -> dict[str, str]:
        """Every `agent-*.jsonl` in the session's own `subagents/` dir: {file name: path}.

        The project dir is shared by all sessions of that directory, so its
        agent files are taken only when named (see `locate`).
        """
        if self.subagents_dir not in self.directories():
            return {}
        try:
            names = os.listdir(self.subagents_dir)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return {}
        found = {}
        for name in sorted(names):
            path = os.path.join(self.subagents_dir, name)
            if AGENT_FILE_RE.match(name) and _regular_file(path):
                found[name] = path
        return found
