"""Where Codex keeps its sessions, and what its state DB says of their tree. Stdlib only (the hook uses it).

- The Codex dir: `CONFAB_CODEX_DIR`, else Codex's own `CODEX_HOME`, else `~/.codex` (the Go client
  ignores `CODEX_HOME` and refuses every rollout of a user who set it). A worker finds it again from
  a rollout's path (the parent of its `sessions` dir): it does not have the hook's environment.
- A session is a rollout `<codex dir>/sessions/YYYY/MM/DD/rollout-<ts>-<uuid>.jsonl`.
- The state DB `<codex dir>/state_<N>.sqlite` (highest N; `CONFAB_CODEX_STATE_DB` wins) holds
  `threads` (id, rollout_path, cwd, model, thread_source, agent_*) and `thread_spawn_edges`
  (parent_thread_id, child_thread_id): which thread spawned which. Opened read-only, with a busy
  timeout; any error reads as "nothing known" (an older or newer schema must not stop a session).
"""

from __future__ import annotations

import glob
import json
import os
import re
import stat
import time

from .. import readonly_db

UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
ROLLOUT_RE = re.compile(r"rollout-.+-(" + UUID + r")\.jsonl(?:\.zst)?\Z")  # Codex may compress rollouts
ZST = ".zst"
UUID_RE = re.compile(UUID + r"\Z")
MAX_WALK = 16  # hops from a subagent to its root, as the Go client
EDGE_RETRIES, EDGE_RETRY_S = 5, 0.05  # a subagent's SessionStart can come before its edge row
BUSY_TIMEOUT_S = 2.0
META_MAX_BYTES = 1 << 20  # the first line (session_meta) is read up to this
SUBTREE_LIMIT = 1000


class BadRollout(ValueError):
    pass


def codex_dir(env=None, home: str = "") -> str:
    env = os.environ if env is None else env
    chosen = env.get("CONFAB_CODEX_DIR") or env.get("CODEX_HOME")
    return os.path.abspath(chosen) if chosen else os.path.join(home or os.path.expanduser("~"), ".codex")


def codex_dir_of(rollout_path: str) -> str:
    """The Codex dir a rollout belongs to: the parent of its nearest `sessions` ancestor ("" if none)."""
    path = os.path.dirname(rollout_path)
    while path not in ("", "/"):
        if os.path.basename(path) == "sessions":
            return os.path.dirname(path)
        path = os.path.dirname(path)
    return ""


def check_rollout_path(path: object, directory: str) -> str:
    """The session UUID of a rollout at `path` under `<directory>/sessions`; BadRollout says why not."""
    if not isinstance(path, str) or not path:
        raise BadRollout("no transcript_path (Codex gives the rollout file's path)")
    if not os.path.isabs(path) or "/../" in path + "/":
        raise BadRollout(f"transcript_path {path!r} is not an absolute path")
    match = ROLLOUT_RE.match(os.path.basename(path))
    if not match:
        raise BadRollout(f"transcript_path {path!r} is not a Codex rollout (rollout-<time>-<uuid>.jsonl)")
    sessions = os.path.join(directory, "sessions")
    parent = os.path.dirname(path)
    real_parent = os.path.realpath(parent) if os.path.isdir(parent) else parent
    for root in {sessions, os.path.realpath(sessions)}:
        if real_parent == root or real_parent.startswith(root + os.sep):
            return match.group(1)
    raise BadRollout(f"transcript_path {path!r} is not under the Codex sessions directory {sessions} "
                     "(CODEX_HOME or CONFAB_CODEX_DIR moves it)")


def plain_name(path: str) -> str:
    """A rollout's base name as shipped: `X.jsonl` also for `X.jsonl.zst` (one backend file either way)."""
    name = os.path.basename(path)
    return name[: -len(ZST)] if name.endswith(ZST) else name


def plain_sibling(path: str) -> str:
    """For `X.jsonl.zst`, `X.jsonl` when it exists (Codex prefers it too); else `path`."""
    if path.endswith(ZST) and regular_file(path[: -len(ZST)]):
        return path[: -len(ZST)]
    return path


def regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def session_meta(path: str) -> dict | None:
    """The rollout's first line's `session_meta` payload; {} when it is not one; None when unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        first = fh.readline(META_MAX_BYTES)
    if not first.endswith(b"\n"):
        return None  # not written completely yet
    try:
        obj = json.loads(first)
    except ValueError:
        return {}
    if not isinstance(obj, dict) or obj.get("type") != "session_meta" or not isinstance(obj.get("payload"), dict):
        return {}
    return obj["payload"]


def is_user_session(meta: dict) -> bool:
    """A rollout a person started (not a subagent, a compaction, a memory job): Go's IsUserSession."""
    return (str(meta.get("thread_source") or "") in ("", "user")
            and not any(meta.get(k) for k in ("agent_path", "agent_role", "agent_nickname")))


def flatten_source(value: object) -> str:
    """session_meta's `source`: a string kept; {"subagent": {...}} -> "subagent"; else ""."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value))
    return ""


# -- the state DB ---------------------------------------------------------------------


def state_db_path(directory: str, env=None) -> str:
    env = os.environ if env is None else env
    if env.get("CONFAB_CODEX_STATE_DB"):
        return env["CONFAB_CODEX_STATE_DB"]
    best, best_key = "", None
    for path in glob.glob(os.path.join(glob.escape(directory), "state_*.sqlite")):
        m = re.search(r"state_([0-9]+)\.sqlite\Z", path)
        key = (1, int(m.group(1)), path) if m else (0, 0, path)
        if best_key is None or key > best_key:
            best, best_key = path, key
    return best


class StateDB:
    """Codex's state DB, read-only; every query answers None/[] on any error."""

    def __init__(self, path: str):
        self.path = path

    def _query(self, sql: str, args: tuple) -> list[tuple] | None:
        return readonly_db.query(self.path, sql, args, BUSY_TIMEOUT_S)

    def parent_of(self, thread: str) -> str:
        rows = self._query("SELECT parent_thread_id FROM thread_spawn_edges WHERE child_thread_id = ? LIMIT 1",
                           (thread,))
        return str(rows[0][0]) if rows and rows[0][0] else ""

    def thread_source(self, thread: str) -> str:
        rows = self._query("SELECT COALESCE(thread_source, '') FROM threads WHERE id = ?", (thread,))
        return str(rows[0][0]) if rows else ""

    def rollout_path(self, thread: str) -> str:
        rows = self._query("SELECT rollout_path FROM threads WHERE id = ? LIMIT 1", (thread,))
        return str(rows[0][0]) if rows and rows[0][0] else ""

    def root_of(self, thread: str) -> str:
        """The thread at the top of `thread`'s spawn tree (itself when it has no parent or on a cycle)."""
        parent = self.parent_of(thread)
        if not parent and self.thread_source(thread) != "user":
            for _ in range(EDGE_RETRIES - 1):  # its edge may be written just after its start
                time.sleep(EDGE_RETRY_S)
                parent = self.parent_of(thread)
                if parent:
                    break
        seen, current = {thread}, thread
        while parent and len(seen) <= MAX_WALK:
            if parent in seen:
                return thread  # a cycle: trust nothing of it
            seen.add(parent)
            current, parent = parent, self.parent_of(parent)
        return current

    def subtree(self, root: str) -> list[dict]:
        """Every descendant of `root`: thread, immediate parent, rollout path and the DB's columns."""
        rows = self._query("""
            WITH RECURSIVE descendants(thread_uuid, parent_thread_uuid, depth) AS (
                SELECT child_thread_id, parent_thread_id, 1 FROM thread_spawn_edges WHERE parent_thread_id = ?
              UNION
                SELECT e.child_thread_id, e.parent_thread_id, d.depth + 1 FROM thread_spawn_edges e
                JOIN descendants d ON e.parent_thread_id = d.thread_uuid WHERE d.depth < 64)
            SELECT DISTINCT d.thread_uuid, d.parent_thread_uuid, t.rollout_path, COALESCE(t.cwd, ''),
                   COALESCE(t.model, ''), COALESCE(t.thread_source, ''), COALESCE(t.agent_path, ''),
                   COALESCE(t.agent_role, ''), COALESCE(t.agent_nickname, '')
            FROM descendants d JOIN threads t ON t.id = d.thread_uuid LIMIT ?""", (root, SUBTREE_LIMIT))
        keys = ("thread_uuid", "parent_thread_uuid", "rollout_path", "cwd", "model", "thread_source",
                "agent_path", "agent_role", "agent_nickname")
        return [dict(zip(keys, (str(v or "") for v in row))) for row in rows or ()]
