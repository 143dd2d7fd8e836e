"""The sessions of every coding agent on this machine, for `confabctl list` and `save`.

One finder per agent, each reading only where that agent keeps its sessions:

- claude-code: `<projects dir>/<project>/<id>.jsonl` (agent files are not sessions);
- codex: `<codex dir>/sessions/YYYY/MM/DD/rollout-<ts>-<uuid>.jsonl` whose first line says a person
  started it (a subagent's, a compaction's or a memory job's rollout is shipped with its root);
  the id is the UUID. Compressed rollouts without a plain sibling are finished sessions Codex
  packed away: not listed (the hook does not follow them either);
- cursor: `<cursor dir>/projects/<workspace>/agent-transcripts/<id>/<id>.jsonl`;
- opencode: `~/.confab/opencode/<id>/messages.jsonl`, the sessions the confabd plugin announced
  (OpenCode keeps its sessions in a database; that file is what confabd collects from it, and its
  `source.json` says from which database, so `save` collects the rest first).

`provider_of(path)` says which agent a transcript path given on the command line belongs to, by
where it is; anything else is Claude Code's, as before providers.
"""

from __future__ import annotations

import os
import re
from typing import Iterator, NamedTuple, Optional

from .providers import CLAUDE_CODE, CODEX, CURSOR, OPENCODE

SESSION_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.jsonl\Z")
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
MAX_FILES = 100_000  # a runaway directory tree is not walked forever


class LocalSession(NamedTuple):
    provider: str
    external_id: str
    path: str
    mtime: float


def claude_projects_dir(home: str, env=None) -> str:
    env = os.environ if env is None else env
    base = env.get("CONFAB_CLAUDE_DIR") or env.get("CLAUDE_CONFIG_DIR") or os.path.join(home, ".claude")
    return os.path.join(base, "projects")


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _session(provider: str, external_id: str, path: str) -> Optional[LocalSession]:
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path) or not SESSION_ID.match(external_id):
        return None
    return LocalSession(provider, external_id, path, info.st_mtime)


def claude_code(home: str, env=None) -> Iterator[LocalSession]:
    projects = claude_projects_dir(home, env)
    for project in _listdir(projects):
        directory = os.path.join(projects, project)
        for name in _listdir(directory):
            if SESSION_FILE.match(name) and not name.startswith("agent-"):
                found = _session(CLAUDE_CODE, name[: -len(".jsonl")], os.path.join(directory, name))
                if found:
                    yield found


def codex(home: str, env=None) -> Iterator[LocalSession]:
    from .providers.codex import rollouts

    sessions = os.path.join(rollouts.codex_dir(env, home), "sessions")
    seen = 0
    for directory, _dirs, names in os.walk(sessions):
        for name in sorted(names):
            seen += 1
            if seen > MAX_FILES:
                return
            match = rollouts.ROLLOUT_RE.match(name)
            if not match or name.endswith(rollouts.ZST):
                continue
            path = os.path.join(directory, name)
            meta = rollouts.session_meta(path)
            if meta is None or (meta and not rollouts.is_user_session(meta)):
                continue
            found = _session(CODEX, match.group(1), path)
            if found:
                yield found


def cursor(home: str, env=None) -> Iterator[LocalSession]:
    from .providers.cursor import paths

    projects = os.path.join(paths.cursor_dir(env, home), "projects")
    for project in _listdir(projects):
        transcripts = os.path.join(projects, project, "agent-transcripts")
        for session_id in _listdir(transcripts):
            found = _session(CURSOR, session_id, os.path.join(transcripts, session_id, session_id + ".jsonl"))
            if found:
                yield found


def opencode(home: str, env=None) -> Iterator[LocalSession]:
    from .providers.opencode.hook import messages_path

    for session_id in _listdir(os.path.join(home, ".confab", "opencode")):
        found = _session(OPENCODE, session_id, messages_path(home, session_id))
        if found:
            yield found


FINDERS = {CLAUDE_CODE: claude_code, CODEX: codex, CURSOR: cursor, OPENCODE: opencode}


def local_sessions(home: str, env=None, provider: Optional[str] = None) -> list[LocalSession]:
    """Every agent's sessions (or one agent's), in no particular order."""
    chosen = [provider] if provider else list(FINDERS)
    return [s for name in chosen for s in FINDERS[name](home, env)]


def provider_of(path: str, home: str, env=None) -> tuple[str, str]:
    """(provider, external id) of a transcript path named on the command line."""
    from .providers.codex import rollouts
    from .providers.cursor import paths

    path = os.path.abspath(path)
    name = os.path.basename(path)
    match = rollouts.ROLLOUT_RE.match(name)
    if match and rollouts.codex_dir_of(path):
        return CODEX, match.group(1)
    parent = os.path.dirname(path)
    if name == "messages.jsonl" and os.path.dirname(parent) == os.path.join(home, ".confab", "opencode"):
        return OPENCODE, os.path.basename(parent)
    if name.endswith(".jsonl") and os.path.basename(os.path.dirname(parent)) == "agent-transcripts" \
            and os.path.basename(parent) == name[: -len(".jsonl")] and paths.cursor_dir_of(path):
        return CURSOR, os.path.basename(parent)
    return CLAUDE_CODE, name[: -len(".jsonl")] if name.endswith(".jsonl") else name
