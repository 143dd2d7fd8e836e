"""Claude Code: the first provider, wrapping the modules that always did its work.

Sessions live in `~/.claude/projects/<project>/<id>.jsonl`; the SessionStart,
UserPromptSubmit and SessionEnd hooks in `~/.claude/settings.json` announce and
end them (confabd.hooks_install, confabctl's hook commands); the parent is the
`claude` process; side files are `agent-<id>.jsonl` and, for a backend that takes them,
the workflow files (confabd.discovery); the
title and summary come from the lines (confabd.metadata); the end is posted as
a `session_end` event.
"""

from __future__ import annotations

from typing import Optional

from ...discovery import SubagentLocator, agent_file_name, agent_ids_in, sendable_file_type
from ...metadata import SessionFacts
from ...parents import CLAUDE_RE
from ..base import Layout, Provider


class ClaudeLayout(Layout):
    def __init__(self, transcript_path: str):
        self.locator = SubagentLocator(transcript_path)

    def scan(self) -> dict[str, str]:
        return self.locator.scan()

    def locate(self, file_name: str) -> Optional[str]:
        return self.locator.locate(file_name)

    def owns(self, file_name: str, path: str) -> bool:
        return self.locator.owns(file_name, path)

    def is_side_file_name(self, file_name: str) -> bool:
        return bool(sendable_file_type(file_name))

    def side_file_type(self, file_name: str) -> str:
        return sendable_file_type(file_name)  # agent-<id>.jsonl, or a workflow run's file

    def scan_gated(self) -> dict[str, tuple[str, str, str]]:
        # only to a backend whose capabilities say so (workflow_files / workflow_journal)
        return {name: (path, file_type, "") for name, (path, file_type) in self.locator.scan_workflows().items()}

    def agents_named(self, text: bytes) -> set[str]:
        return agent_ids_in(text)

    def agent_file_name(self, agent_id: str) -> str:
        return agent_file_name(agent_id)


class ClaudeCode(Provider):
    name = "claude-code"
    label = "Claude Code"
    parent_re = CLAUDE_RE
    posts_session_end = True

    def layout(self, transcript_path: str, external_id: str) -> ClaudeLayout:
        return ClaudeLayout(transcript_path)

    def facts(self) -> SessionFacts:
        return SessionFacts()


PROVIDER = ClaudeCode()
