"""`confabctl hook session-start --provider codex`: which session a Codex SessionStart announces.

Codex runs the hook for a new, resumed, cleared or forked session, and (before SubagentStart
existed) for each subagent thread: the subagent's start is walked up the spawn edges to its root,
the one session shipped (its subagents ride along as `agent` files). A rollout that is not a
user's session even after the walk (a compaction or memory job) is not shipped. Stdlib only.
"""

from __future__ import annotations

import os

from . import rollouts

RESPONSE = '{"continue": true}'  # what Codex's hook output schema expects; nothing shown


class Skip(Exception):
    """Nothing to register, and why (said on stderr)."""


def announce(payload: dict, env=None, home: str = "") -> tuple[str, str, str]:
    """(external id, rollout path, cwd) of the root session the hook input belongs to.

    Raises rollouts.BadRollout for input that names no valid rollout, Skip for a rollout that is
    not a user's session.
    """
    env = os.environ if env is None else env
    directory = rollouts.codex_dir(env, home)
    path = payload.get("transcript_path")
    db = rollouts.StateDB(rollouts.state_db_path(directory, env))
    if not path and isinstance(payload.get("session_id"), str):  # nullable in Codex's schema
        path = db.rollout_path(payload["session_id"])
    thread = rollouts.check_rollout_path(path, directory)
    cwd = payload.get("cwd") if isinstance(payload.get("cwd"), str) else ""
    root = db.root_of(thread)
    if root != thread:
        root_path = db.rollout_path(root)
        try:
            rollouts.check_rollout_path(root_path, directory)
        except rollouts.BadRollout:
            root, root_path = thread, path  # the DB names nothing usable: ship the firing session
        path, thread = root_path, root
    path = rollouts.plain_sibling(path)
    if path.endswith(rollouts.ZST):
        raise Skip(f"rollout {path} is compressed and has no plain .jsonl beside it: a finished session, "
                   "not one to follow (its subagents' compressed rollouts are read, docs/PROVIDERS.md)")
    meta = rollouts.session_meta(path)
    if meta and not rollouts.is_user_session(meta):
        raise Skip(f"rollout {path} is a {meta.get('thread_source') or 'agent'} thread, not a user's session; "
                   "it is shipped with its root session")
    return thread, path, cwd
