"""Finding a session's subagent transcripts.

Claude Code names a subagent in the parent's lines (`toolUseResult.agentId`,
or the same inside a tool_result block); its transcript is
`agent-<agentId>.jsonl`, either beside the main transcript (older releases) or
in `<transcript without .jsonl>/subagents/` (newer). Agent files can name
further agents, so discovery runs over every tracked file's new lines.
The `subagents/` dir is also scanned, which finds files again after a restart
even when the lines that named them were synced long ago.

Claude Code's workflows write `subagents/workflows/<runId>/agent-<id>.jsonl`
and `.../journal.jsonl`; the newer Go client sends them under exactly that
path-shaped name (`file_type` `agent` and `workflow_journal`) when the backend
says it can take them (capabilities.py). Nothing else there is sent
(`*.meta.json`, `wf_*.json`).

File names also come from the backend (init's `files`), which is not trusted:
a name is used only when it is one this client would send itself (a base
`agent-<id>.jsonl`, or that workflow shape: no `..`, no absolute path, no other
directory), and only a regular file (not a symlink, under no symlinked
directory) in the session's own directories is ever opened for it.
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
WORKFLOWS = "workflows"
RUN_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\Z")  # a directory name, never `.` or `..`
WORKFLOW_AGENT_RE = re.compile(r"agent-[A-Za-z0-9_-]{1,128}\.jsonl\Z")
WORKFLOW_JOURNAL = "journal.jsonl"
MAX_FILE_NAME_BYTES = 512  # the server's limit on file_name


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


def workflow_file_type(base: str) -> str:
    """The file_type a workflow run's file is sent as, "" for one never sent (workflowFileType)."""
    if base == WORKFLOW_JOURNAL:
        return "workflow_journal"
    if WORKFLOW_AGENT_RE.match(base):
        return "agent"
    return ""


def workflow_file_name(run_id: str, base: str) -> str:
    return f"subagents/{WORKFLOWS}/{run_id}/{base}"


def split_workflow_name(name: object) -> Optional[tuple[str, str]]:
    """(run id, base) of a path-shaped name this client sends; None for anything else."""
    if not isinstance(name, str) or len(name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
        return None
    parts = name.split("/")
    if len(parts) != 4 or parts[:2] != ["subagents", WORKFLOWS]:
        return None
    run_id, base = parts[2], parts[3]
    if not RUN_ID_RE.match(run_id) or not workflow_file_type(base):
        return None
    return run_id, base


def sendable_file_type(name: object) -> str:
    """The file_type of a file name this client sends besides the transcript ("" for any other name)."""
    if is_agent_file_name(name):
        return "agent"
    split = split_workflow_name(name)
    return workflow_file_type(split[1]) if split else ""


def _real_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


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
        it, or if the name is not an agent file name (a path, `..`, anything else).
        A workflow file's name is its place under `subagents/`, if no directory on the way is a symlink."""
        split = split_workflow_name(file_name)
        if split:
            run_dir = self._workflow_run_dir(split[0])
            path = os.path.join(run_dir, split[1]) if run_dir else ""
            return path if path and _regular_file(path) else None
        if not is_agent_file_name(file_name):
            return None
        for directory in self.directories():
            path = os.path.join(directory, file_name)
            if _regular_file(path):
                return path
        return None

    def owns(self, file_name: str, path: str) -> bool:
        """Whether `path` is where this session keeps the agent or workflow file `file_name`."""
        split = split_workflow_name(file_name)
        if split:
            return path == os.path.join(self.subagents_dir, WORKFLOWS, *split)
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

    def _workflows_dir(self) -> Optional[str]:
        if self.subagents_dir not in self.directories():
            return None
        path = os.path.join(self.subagents_dir, WORKFLOWS)
        return path if _real_dir(path) else None

    def _workflow_run_dir(self, run_id: str) -> Optional[str]:
        workflows = self._workflows_dir()
        path = os.path.join(workflows, run_id) if workflows and RUN_ID_RE.match(run_id) else ""
        return path if path and _real_dir(path) else None

    def scan_workflows(self) -> dict[str, tuple[str, str]]:
        """Every workflow file sent, in the session's `subagents/workflows/<runId>/` dirs:
        {file name: (path, file_type)}. {} without a workflows dir (the common case)."""
        workflows = self._workflows_dir()
        if workflows is None:
            return {}
        found = {}
        for run_id in _listdir(workflows):
            run_dir = self._workflow_run_dir(run_id)
            for base in _listdir(run_dir) if run_dir else ():
                path = os.path.join(run_dir, base)
                file_type = workflow_file_type(base)
                name = workflow_file_name(run_id, base)
                if file_type and split_workflow_name(name) and _regular_file(path):
                    found[name] = (path, file_type)
        return found


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []
