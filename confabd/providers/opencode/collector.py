"""OpenCode keeps no transcript: a collector turns one session's rows into `messages.jsonl`.

Each line is `{"info": <message>, "parts": [<part>, ...]}` with the ids put back (`info.id`,
`info.sessionID`; each part's `id`, `sessionID`, `messageID`), the shape the server parses. A
message is written once, complete, and never again (the file is append-only, so line numbers are
stable for exactly-once delivery):

- an assistant message is complete once it has `finish` or an `error`;
- a user message once it has a text part or a later message exists (its row and its text part are
  separate writes: the Go client could save a prompt without its text for good);
- the walk stops at the first incomplete message, so no later one overtakes it;
- tool parts that are not `completed` or `error` yet are left out of the message that is written.

A restart seeds the written ids from the file. Message ids are compared as strings (OpenCode's are
time-ordered).
"""

from __future__ import annotations

import json
import os

from .db import OpenCodeDB

TERMINAL_TOOL_STATES = ("completed", "error")


class Collector:
    def __init__(self, db: OpenCodeDB, session_id: str, out_path: str):
        self.db = db
        self.session_id = session_id
        self.out_path = out_path
        self.written: set[str] = set()
        self.high = ""  # the largest message id written
        self.seeded = False

    def _seed(self) -> None:
        self.seeded = True
        try:
            with open(self.out_path, "rb") as fh:
                for line in fh:
                    try:
                        msg_id = json.loads(line)["info"]["id"]
                    except (ValueError, KeyError, TypeError):
                        continue
                    if isinstance(msg_id, str):
                        self.written.add(msg_id)
                        self.high = max(self.high, msg_id)
        except FileNotFoundError:
            pass

    def reconcile(self) -> int:
        """Append every newly complete message; the number appended."""
        if not self.seeded:
            self._seed()
        rows = self.db.messages(self.session_id, self.high)
        if not rows:
            return 0
        envelopes = _envelopes(rows, self.session_id)
        ready = []
        for i, (msg_id, info, parts) in enumerate(envelopes):
            if msg_id in self.written:
                continue
            if not _complete(info, parts, later=i + 1 < len(envelopes)):
                break
            ready.append((msg_id, info, [p for p in parts if _keep(p)]))
        if ready:
            self._append(ready)
        return len(ready)

    def _append(self, ready: list) -> None:
        os.makedirs(os.path.dirname(self.out_path), mode=0o700, exist_ok=True)
        data = b"".join(json.dumps({"info": info, "parts": parts}, ensure_ascii=False,
                                   separators=(",", ":")).encode() + b"\n" for _, info, parts in ready)
        fd = os.open(self.out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)  # one write: a kill leaves whole lines or none (a half line waits, as any)
        finally:
            os.close(fd)
        for msg_id, _, _ in ready:
            self.written.add(msg_id)
            self.high = max(self.high, msg_id)


def _envelopes(rows: list[tuple], session_id: str) -> list[tuple[str, dict, list]]:
    grouped: dict[str, tuple[dict, list]] = {}
    for msg_id, msg_data, part_id, part_data in rows:
        if msg_id not in grouped:
            info = _object(msg_data)
            info.update(id=msg_id, sessionID=session_id)
            grouped[msg_id] = (info, [])
        if part_id is not None:
            part = _object(part_data)
            part.update(id=part_id, sessionID=session_id, messageID=msg_id)
            grouped[msg_id][1].append(part)
    return sorted(((k, v[0], v[1]) for k, v in grouped.items()), key=lambda e: e[0])


def _object(data) -> dict:
    try:
        value = json.loads(data) if data else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _complete(info: dict, parts: list, later: bool) -> bool:
    if info.get("role") == "assistant":
        return info.get("finish") is not None or info.get("error") is not None
    has_text = any(p.get("type") == "text" and str(p.get("text") or "").strip() for p in parts)
    return has_text or later


def _keep(part: dict) -> bool:
    if part.get("type") != "tool":
        return True
    state = part.get("state")
    return isinstance(state, dict) and state.get("status") in TERMINAL_TOOL_STATES
