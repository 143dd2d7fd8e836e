"""Which optional file types a backend takes: `GET /api/v1/capabilities`, as the newer Go client asks it.

Workflow files are sent only to a backend that says so: `agent` files of a
workflow run need `"workflow_files": true`, its journal `"workflow_journal":
true` (pkg/sync/engine.go `resolveCaps`, `workflowFileTypeAllowed`). The
question is asked only once a workflow file exists, and its answer cached per
backend for the process: a 200 or a 404 (an older server: nothing optional) is
final; a failure (unreachable, 5xx, an unreadable answer) is not, and the
files wait for the next cycle. A refusal is said once in the log.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

NEEDED = {"agent": "workflow_files", "workflow_journal": "workflow_journal"}
#: OpenCode's child sessions (`opencode/<child>/messages.jsonl`, file type `agent`): the server says
#: `opencode_subagents` (internal/api/capabilities.go); the Go client asks `opencode_subagent_files`,
#: a key no server sends, so its children never upload (docs/PROVIDERS.md).
OPENCODE_SUBAGENTS = "opencode_subagents"

_answers: dict[str, dict] = {}  # capabilities_key -> the backend's final answer
_said: set[tuple[str, str]] = set()


class Capabilities:
    """One sink's capabilities, asked lazily."""

    def __init__(self, sink):
        self.sink = sink
        self.key = getattr(sink, "capabilities_key", "")
        self.failed = False  # asked and failed in this round: not again until the next

    def new_round(self) -> None:
        self.failed = False

    def allows(self, file_type: str, capability: str = "") -> bool:
        """Whether files of `file_type` go to this backend: it says `capability` (by default the
        one workflow files of that type need, NEEDED) in its capabilities."""
        answer = self._answer()
        if answer is None:
            return False
        needed = capability or NEEDED.get(file_type, "")
        allowed = bool(needed and answer.get(needed))
        if not allowed and (self.key, needed) not in _said:
            _said.add((self.key, needed))
            log.info("%s does not say %r in its capabilities: %s files are not sent to it",
                     self.key or "the sink", needed, file_type if capability else f"workflow {file_type}")
        return allowed

    def _answer(self):
        if self.key in _answers:
            return _answers[self.key]
        if self.failed:
            return None
        ask = getattr(self.sink, "capabilities", None)
        if ask is None:  # a sink that cannot say: nothing optional
            return {}
        from .sinks.base import SinkError

        try:
            answer = ask()
        except SinkError as exc:
            self.failed = True
            if (self.key, "") not in _said:
                _said.add((self.key, ""))
                log.info("cannot ask %s for its capabilities (%s); workflow files wait for the next cycle",
                         self.key, exc)
            return None
        _answers[self.key] = answer
        return answer
