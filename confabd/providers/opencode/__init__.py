"""OpenCode: sessions live in its SQLite database; a collector writes the JSONL that is shipped.

- Announced by the confabd plugin in OpenCode's plugins dir (install.py, hook.py), ended by its
  dispose (no `session_end` event: OpenCode has no end of its own to report) or by the exit of the
  `opencode` process.
- Files: `messages.jsonl` (the root session, `transcript`), written by collector.py from the DB
  before every sync pass (and while the worker waits for it to exist); each descendant session
  (a subagent's, found by `parent_id`) as `opencode/<child>/messages.jsonl` (`agent`), collected
  into `~/.confab/opencode/<root>/children/<child>/messages.jsonl`.
- Title: the first user message's first text part.
"""

from __future__ import annotations

import json
import os
import re
from typing import Optional

from ...metadata import FIRST_MESSAGE_MAX_BYTES, clean_text
from ...capabilities import OPENCODE_SUBAGENTS
from ..base import Facts, Layout, Provider
from .collector import Collector
from .db import OpenCodeDB
from .hook import source_of

_CHILD = re.compile(r"opencode/([A-Za-z0-9_-]{1,128})/messages\.jsonl\Z")


def _db(transcript_path: str) -> OpenCodeDB:
    return OpenCodeDB(source_of(transcript_path))


class OpenCodeLayout(Layout):
    def __init__(self, transcript_path: str, external_id: str):
        self.root = external_id
        self.db = _db(transcript_path)
        self.collector = Collector(self.db, external_id, transcript_path)
        self.children_dir = os.path.join(os.path.dirname(transcript_path), "children")
        self.children: dict[str, Collector] = {}  # file name -> its collector

    def collect(self) -> None:
        self.collector.reconcile()
        for child in self.db.descendants(self.root):
            name = f"opencode/{child}/messages.jsonl"
            if not _CHILD.match(name):  # an id that is not a plain name never becomes a path
                continue
            if name not in self.children:
                self.children[name] = Collector(self.db, child, os.path.join(self.children_dir, child,
                                                                             "messages.jsonl"))
        for collector in self.children.values():
            collector.reconcile()

    def scan_gated(self) -> dict[str, tuple[str, str, str]]:
        """Child sessions go only to a server that says `opencode_subagents` (the server's key; the
        Go client asks `opencode_subagent_files`, which no server sends)."""
        return {name: (c.out_path, "agent", OPENCODE_SUBAGENTS) for name, c in self.children.items()
                if os.path.isfile(c.out_path)}

    def is_side_file_name(self, file_name: str) -> bool:
        return isinstance(file_name, str) and _CHILD.match(file_name) is not None

    def locate(self, file_name: str) -> Optional[str]:
        match = _CHILD.match(file_name) if isinstance(file_name, str) else None
        if not match:
            return None
        path = os.path.join(self.children_dir, match.group(1), "messages.jsonl")
        if file_name not in self.children:  # named by the backend after a restart: collect it again
            self.children[file_name] = Collector(self.db, match.group(1), path)
        return path if os.path.isfile(path) else None

    def owns(self, file_name: str, path: str) -> bool:
        match = _CHILD.match(file_name) if isinstance(file_name, str) else None
        return bool(match) and path == os.path.join(self.children_dir, match.group(1), "messages.jsonl")


class OpenCodeFacts(Facts):
    def __init__(self):
        self.first_user_message = ""
        self.summary = ""
        self.cwd = ""
        self.git_branch = ""
        self.searched = False

    def learn(self, lines: list[bytes], joined: Optional[bytes] = None) -> None:
        for line in lines:
            if self.searched:
                return
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            info = obj.get("info") if isinstance(obj, dict) else None
            if not isinstance(info, dict) or info.get("role") != "user":
                continue
            self.searched = True  # the first user message only, as the client (no later prompt as title)
            for part in obj.get("parts") or ():
                if isinstance(part, dict) and part.get("type") == "text" and str(part.get("text") or "").strip():
                    self.first_user_message = clean_text(part["text"], FIRST_MESSAGE_MAX_BYTES)
                    return


class OpenCode(Provider):
    name = "opencode"
    label = "OpenCode"
    parent_re = re.compile(r"(?:^|/)opencode(?:\s|$)")
    posts_session_end = False

    def layout(self, transcript_path: str, external_id: str) -> OpenCodeLayout:
        return OpenCodeLayout(transcript_path, external_id)

    def facts(self) -> OpenCodeFacts:
        return OpenCodeFacts()

    def prepare(self, transcript_path: str, external_id: str) -> None:
        """While the worker waits for messages.jsonl: write it once a first message is complete."""
        Collector(_db(transcript_path), external_id, transcript_path).reconcile()


PROVIDER = OpenCode()
