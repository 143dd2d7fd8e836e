"""Cursor (the cursor-agent CLI and the IDE's agent): a JSONL transcript per session.

- Announced and ended by `sessionStart`/`sessionEnd` in `~/.cursor/hooks.json` (install.py, hook.py);
  the transcript path comes from the first workspace root; the end's `reason` is the `session_end`
  event's. The parent (`cursor-agent`, or the IDE) is a backstop when sessionEnd never comes.
- Files: the transcript (`<id>.jsonl`) and every regular `subagents/*.jsonl` beside it, shipped as
  `agent` files named `subagents/<name>` (the server's key segments).
- Metadata on every transcript chunk: `first_user_message` (the `<user_query>` unwrapped),
  `latest_message_at` (the transcript's mtime, UTC: its lines have no timestamps), `summary` (the
  CLI's meta.json title, cut to the server's 2,048 bytes: the Go client's 4,096 fails every chunk),
  `model` (what sessionStart said).
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import re
import stat
from typing import Optional

import msgspec

from ...metadata import FIRST_MESSAGE_MAX_BYTES, SUMMARY_MAX_BYTES, clean_text
from ..base import Facts, Layout, Provider
from . import paths

SUBAGENTS = "subagents"
_NAME = re.compile(r"subagents/[A-Za-z0-9._-]{1,200}\.jsonl\Z")
_QUERY = re.compile(r"(?s)<user_query>(.*?)</user_query>")
META_MAX_BYTES = 1 << 20


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class CursorLayout(Layout):
    def __init__(self, transcript_path: str, external_id: str):
        self.transcript_path = transcript_path
        self.external_id = external_id
        self.subagents_dir = os.path.join(os.path.dirname(transcript_path), SUBAGENTS)
        self.directory = paths.cursor_dir_of(transcript_path)

    def scan(self) -> dict[str, str]:
        if os.path.islink(self.subagents_dir):
            return {}  # a link could lead anywhere the user can read
        try:
            names = sorted(os.listdir(self.subagents_dir))
        except OSError:
            return {}
        found = {}
        for name in names:
            file_name = f"{SUBAGENTS}/{name}"
            path = os.path.join(self.subagents_dir, name)
            if _NAME.match(file_name) and _regular(path):
                found[file_name] = path
        return found

    def is_side_file_name(self, file_name: str) -> bool:
        return isinstance(file_name, str) and _NAME.match(file_name) is not None

    def locate(self, file_name: str) -> Optional[str]:
        if not self.is_side_file_name(file_name):
            return None
        path = os.path.join(self.subagents_dir, file_name.split("/", 1)[1])
        return path if _regular(path) and not os.path.islink(self.subagents_dir) else None

    def owns(self, file_name: str, path: str) -> bool:
        return self.is_side_file_name(file_name) and path == os.path.join(self.subagents_dir,
                                                                           file_name.split("/", 1)[1])

    def chunk_fields(self, file_name: str, file_type: str, path: str) -> dict[str, str]:
        if file_type != "transcript":
            return {}
        fields = {}
        try:
            mtime = os.stat(path).st_mtime
            fields["latest_message_at"] = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc) \
                .isoformat(timespec="milliseconds").replace("+00:00", "Z")
        except OSError:
            pass
        title = self._title()
        if title:
            fields["summary"] = title
        return fields

    def _title(self) -> str:
        """The CLI's chat title (meta.json), cleaned and cut to the server's summary limit."""
        if not self.directory:
            return ""
        pattern = os.path.join(glob.escape(self.directory), "chats", "*", glob.escape(self.external_id), "meta.json")
        for path in sorted(glob.glob(pattern)):
            if not _regular(path):
                continue
            try:
                with open(path, "rb") as fh:
                    meta = json.loads(fh.read(META_MAX_BYTES))
            except (OSError, ValueError):
                continue
            title = meta.get("title") if isinstance(meta, dict) else None
            if isinstance(title, str) and title.strip():
                return clean_text(title, SUMMARY_MAX_BYTES)
        return ""


class CursorFacts(Facts):
    def __init__(self):
        self.first_user_message = ""
        self.summary = ""
        self.cwd = ""
        self.git_branch = ""

    def learn(self, lines: list[bytes], joined: Optional[bytes] = None) -> None:
        for line in lines:
            if self.first_user_message:
                return
            if b'"user"' not in line:
                continue
            try:
                obj = msgspec.json.decode(line)
            except (msgspec.DecodeError, UnicodeDecodeError):
                continue
            if not isinstance(obj, dict) or obj.get("role") != "user":
                continue
            text = _text(obj.get("message"))
            match = _QUERY.search(text)  # also after another wrapper (attached skills)
            text = clean_text(match.group(1) if match else text, FIRST_MESSAGE_MAX_BYTES)
            if text:
                self.first_user_message = text


def _text(message) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    for block in content if isinstance(content, list) else ():
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            if block["text"].strip():
                return block["text"]
    return ""


class Cursor(Provider):
    name = "cursor"
    label = "Cursor"
    # cursor-agent, or the IDE (Linux: `cursor`; macOS: Cursor.app and its helpers); never a shell
    # whose command line merely says `--provider cursor`.
    parent_re = re.compile(r"(?:^|/)(?:cursor-agent|cursor|Cursor)(?:\s|$)|Cursor\.app|Cursor Helper")
    posts_session_end = True

    def layout(self, transcript_path: str, external_id: str) -> CursorLayout:
        return CursorLayout(transcript_path, external_id)

    def facts(self) -> CursorFacts:
        return CursorFacts()


PROVIDER = Cursor()
