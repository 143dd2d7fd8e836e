"""The one interface every agent implements (Claude Code is the first).

A `Provider` answers, for its agent:

- `name`, `label`: the wire name on init, and how messages name the agent;
- `parent_re`: how its process is recognised among a hook's ancestors (the
  session's parent, watched by the master: its exit ends the session);
- `posts_session_end`: whether a finished session sends the backend a
  `session_end` event (Codex has no end hook: its sessions never do);
- `layout(transcript_path, external_id)`: a `Layout`, which files belong to the
  session and with which `file_name`/`file_type`;
- `facts()`: a `Facts`, what the session's lines say of it (title, summary, cwd);
- where its sessions live and how a hook announces them: the provider's `hook`
  module and `install` module (stdlib only, run by confabctl).

The engine holds one Layout and one Facts per session and asks them; it never
tests a provider's name.
"""

from __future__ import annotations

import re
from typing import Any, Optional


class Layout:
    """Which files belong to one session besides its transcript, and their names.

    - `scan()`: {file_name: path} of the side files (`file_type` "agent") to track now;
      called after every delivery round, so cheap or rate-limited. `scan_gated()`: the same for
      files a backend takes only when its capabilities say so, with their file_type.
    - `side_file_type(name)`: the file_type a side file of that name is sent as ("" if never).
    - `locate(name)`: the path of a side file the backend named (init's `files`), None when
      the name is not one this client sends (the backend is not trusted) or not found.
    - `owns(name, path)`: whether State's remembered `path` for `name` is still this session's.
    - `agents_named(text)` / `agent_file_name(id)`: side files named inside lines (Claude
      Code's agent ids), kept pending in State until their files appear.
    - `chunk_extras(name, file_type, path)`: extra ChunkMetadata fields (a sidecar) a chunk
      of that file carries until one carrying them has been accepted; `chunk_fields(...)`: fields
      every chunk of it carries.
    """

    def collect(self) -> None:
        """Before every sync pass: write the files an agent without transcripts keeps elsewhere (OpenCode)."""

    def scan(self) -> dict[str, str]:
        return {}

    def locate(self, file_name: str) -> Optional[str]:
        return None

    def owns(self, file_name: str, path: str) -> bool:
        return False

    def is_side_file_name(self, file_name: str) -> bool:
        return False

    def side_file_type(self, file_name: str) -> str:
        """The file_type a side file of that name is sent as; "" for a name this client never sends."""
        return "agent" if self.is_side_file_name(file_name) else ""

    def scan_gated(self) -> dict[str, tuple[str, str, str]]:
        """{file_name: (path, file_type, capability)} of side files sent only to a backend whose
        capabilities say `capability` ("": the one its file_type needs, confabd.capabilities):
        Claude Code's workflow files, OpenCode's child sessions."""
        return {}

    def agents_named(self, text: bytes) -> set[str]:
        return set()

    def agent_file_name(self, agent_id: str) -> str:
        return agent_id

    def chunk_extras(self, file_name: str, file_type: str, path: str) -> Optional[dict[str, Any]]:
        return None

    def chunk_fields(self, file_name: str, file_type: str, path: str) -> dict[str, str]:
        """ChunkMetadata text fields a chunk of that file carries every time (Cursor's title and
        recency). `summary` is redacted by the engine like the lines."""
        return {}


class Facts:
    """What the session's lines say of it, learnt batch by batch from the lines as sent."""

    first_user_message = ""
    summary = ""
    cwd = ""
    git_branch = ""

    def learn(self, lines: list[bytes], joined: Optional[bytes] = None) -> None:
        pass


class Provider:
    name = ""
    label = ""
    parent_re: re.Pattern = re.compile(r"(?!)")
    posts_session_end = True

    def layout(self, transcript_path: str, external_id: str) -> Layout:
        return Layout()

    def facts(self) -> Facts:
        return Facts()

    def prepare(self, transcript_path: str, external_id: str) -> None:
        """While the worker waits for the transcript to appear (OpenCode's collector writes it)."""

    def __repr__(self) -> str:
        return f"<provider {self.name}>"
