"""Codex (OpenAI's CLI): a session is a rollout file; its subagents are other rollouts of its tree.

- Announced by a `[[hooks.SessionStart]]` in `$CODEX_HOME/config.toml` (install.py) whose command is
  `confabctl hook session-start --provider codex` (hook.py); a subagent's start walks up to its root.
- The parent is the `codex` executable; the session ends only when it exits (Codex has no end hook):
  no `session_end` event is posted.
- Files: the root rollout is the `transcript` (file_name: its base name); every descendant thread in
  the state DB's `thread_spawn_edges` whose rollout is a regular file under the same sessions dir is
  an `agent` file named by its base name, at the path the DB gives (found again after a restart:
  the Go client looked for it beside the root and lost it).
- Sidecar: `codex_rollout` (records.CodexRollout) rides on each rollout's first chunk, and on every
  later one until a chunk carrying it was accepted (the server commits the lines before it records
  the sidecar, so a sidecar's 500 would otherwise lose it for good).
- Compressed rollouts (`X.jsonl.zst`, Codex's own compression): shipped as `X.jsonl`, read from the
  plain sibling when there is one, else from a private decompressed copy (~/.confab/codex/<root>/),
  made once per compressed file (it never changes: Codex compresses finished rollouts).
- Title: `codex exec` writes no `event_msg`/`user_message` line; the prompt is then taken from the
  `item_completed` UserMessage, else the first user `response_item` that is not Codex's own context.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Optional

import msgspec
import zstandard

from ... import fileio
from ...metadata import FIRST_MESSAGE_MAX_BYTES, clean_text, cut_utf8
from ...records import CodexRollout
from ..base import Facts, Layout, Provider
from . import rollouts

log = logging.getLogger(__name__)

# The server's limits on codex_rollout's fields (ValidateCodexRolloutMetadata).
FIELD_LIMITS = {"rollout_path": 8192, "cwd": 8192, "model": 255, "source": 64, "thread_source": 255,
                "agent_path": 8192, "agent_role": 255, "agent_nickname": 255}


def sidecar(**fields: str) -> CodexRollout:
    """A codex_rollout within the server's limits (a value too long is cut, never refused)."""
    return CodexRollout(**{k: cut_utf8(v, FIELD_LIMITS[k]) if k in FIELD_LIMITS else v
                           for k, v in fields.items()})


def _private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


class CodexLayout(Layout):
    def __init__(self, transcript_path: str, external_id: str):
        self.transcript_path = transcript_path
        self.root = external_id
        self.directory = rollouts.codex_dir_of(transcript_path)
        self.db = rollouts.StateDB(rollouts.state_db_path(self.directory, {})) if self.directory else None
        self.children: dict[str, dict] = {}  # file name -> its DB row (+ "source")
        self.refused: set[str] = set()  # rollout paths that are not agent files (logged once)

    def scan(self) -> dict[str, str]:
        # Asked after every delivery round (a final sync included): one indexed local query, so
        # not rate-limited, or a subagent that started just before the end could be missed.
        if self.db is not None:
            for row in self.db.subtree(self.root):
                self._consider(row)
        return {name: row["local_path"] for name, row in self.children.items()}

    def _consider(self, row: dict) -> None:
        path = rollouts.plain_sibling(row["rollout_path"])
        name = rollouts.plain_name(path)
        if name in self.children or path in self.refused or path == self.transcript_path:
            return
        try:
            thread = rollouts.check_rollout_path(path, self.directory)
        except rollouts.BadRollout as exc:
            self._refuse(path, str(exc))
            return
        if not rollouts.regular_file(path):
            return  # not written yet (or a symlink: never followed); asked again next scan
        if path.endswith(rollouts.ZST):
            try:
                path = self._decompressed(path, name)
            except (OSError, zstandard.ZstdError) as exc:
                self._refuse(path, f"cannot decompress it ({exc})")
                return
        meta = rollouts.session_meta(path)
        if meta is None:
            return
        if thread != row["thread_uuid"] or (meta and rollouts.is_user_session(meta)):
            self._refuse(path, "not a subagent thread of this session")
            return
        self.children[name] = dict(row, source=rollouts.flatten_source(meta.get("source")), local_path=path)

    def _decompressed(self, path: str, name: str) -> str:
        """A private plain copy of a compressed rollout, made once (atomically: a kill leaves none)."""
        cache = fileio.ensure_private_dir(os.path.join(os.path.expanduser("~"), ".confab", "codex", self.root))
        target = os.path.join(cache, name)
        if rollouts.regular_file(target) and os.stat(target).st_mtime >= os.stat(path).st_mtime:
            return target
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as src, open(target + ".tmp", "wb", opener=_private) as dst:
            zstandard.ZstdDecompressor().copy_stream(src, dst)
        os.replace(target + ".tmp", target)
        return target

    def _refuse(self, path: str, why: str) -> None:
        self.refused.add(path)
        log.warning("%s: not shipping the rollout %r the Codex state DB names: %s", self.root, path[:300], why)

    def locate(self, file_name: str) -> Optional[str]:
        if not self.is_side_file_name(file_name):
            return None
        self.scan()
        row = self.children.get(file_name)
        return row["local_path"] if row else None

    def owns(self, file_name: str, path: str) -> bool:
        return self.locate(file_name) == path

    def is_side_file_name(self, file_name: str) -> bool:
        return (isinstance(file_name, str) and rollouts.ROLLOUT_RE.match(file_name) is not None
                and not file_name.endswith(rollouts.ZST))

    def chunk_extras(self, file_name: str, file_type: str, path: str) -> Optional[dict[str, Any]]:
        if file_type == "transcript":
            meta = rollouts.session_meta(path) or {}
            text = {k: meta.get(k) if isinstance(meta.get(k), str) else ""
                    for k in ("cwd", "model", "thread_source", "agent_path", "agent_role", "agent_nickname")}
            return {"codex_rollout": sidecar(thread_uuid=self.root, rollout_path=path,
                                             source=rollouts.flatten_source(meta.get("source")), **text)}
        row = self.children.get(file_name)
        if row is None:
            return None
        fields = {k: row[k] for k in ("cwd", "model", "thread_source", "agent_path", "agent_role",
                                      "agent_nickname", "source")}
        parent = row["parent_thread_uuid"]
        return {"codex_rollout": sidecar(thread_uuid=row["thread_uuid"], rollout_path=row["rollout_path"],
                                         parent_thread_uuid=parent if rollouts.UUID_RE.match(parent) else "",
                                         **fields)}


_NOT_A_PROMPT = re.compile(r"\s*(<environment_context>|<user_instructions>|<permissions|# AGENTS\.md)")


class CodexFacts(Facts):
    """The first prompt and the cwd, from a rollout's lines."""

    def __init__(self):
        self.first_user_message = ""
        self.summary = ""
        self.cwd = ""
        self.git_branch = ""
        self.fallback = ""  # a lesser source, used when no better one appears in the same lines

    def learn(self, lines: list[bytes], joined: Optional[bytes] = None) -> None:
        if self.first_user_message and self.cwd:
            return
        for line in lines:
            if self.first_user_message and self.cwd:
                break
            if b'"session_meta"' not in line and b'"user' not in line and b"UserMessage" not in line:
                continue
            obj = _decode(line)
            payload = obj.get("payload") if isinstance(obj.get("payload"), dict) else {}
            kind = obj.get("type")
            if kind == "session_meta" and not self.cwd and isinstance(payload.get("cwd"), str):
                self.cwd = payload["cwd"]
            elif not self.first_user_message:
                self._learn_prompt(kind, payload)
        if not self.first_user_message and self.fallback:
            self.first_user_message = self.fallback

    def _learn_prompt(self, kind, payload: dict) -> None:
        text = ""
        if kind == "event_msg" and payload.get("type") == "user_message":
            text = payload.get("message") if isinstance(payload.get("message"), str) else ""
        elif kind == "event_msg" and payload.get("type") == "item_completed":
            item = payload.get("item") if isinstance(payload.get("item"), dict) else {}
            if item.get("type") == "UserMessage":
                text = _first_text(item.get("content"), "text")
        elif kind == "response_item" and payload.get("type") == "message" and payload.get("role") == "user":
            candidate = _first_text(payload.get("content"), "input_text")
            if candidate and not _NOT_A_PROMPT.match(candidate) and not self.fallback:
                self.fallback = clean_text(candidate, FIRST_MESSAGE_MAX_BYTES)
            return
        if text.strip():
            self.first_user_message = clean_text(text, FIRST_MESSAGE_MAX_BYTES)


def _first_text(content, kind: str) -> str:
    for block in content if isinstance(content, list) else ():
        if isinstance(block, dict) and block.get("type") == kind and isinstance(block.get("text"), str):
            if block["text"].strip():
                return block["text"]
    return ""


def _decode(line: bytes) -> dict:
    try:
        obj = msgspec.json.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


class Codex(Provider):
    name = "codex"
    label = "Codex"
    parent_re = re.compile(r"(?:^|/)codex(?:\s|$)")  # the executable, never a shell naming `--provider codex`
    posts_session_end = False

    def layout(self, transcript_path: str, external_id: str) -> CodexLayout:
        return CodexLayout(transcript_path, external_id)

    def facts(self) -> CodexFacts:
        return CodexFacts()


PROVIDER = Codex()
