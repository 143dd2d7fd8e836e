"""`confabctl list`: every coding agent's sessions on this machine, newest first, to find an id.

Sessions are found where each agent keeps them (local_sessions.py). For each: its agent, its title (the summary, else the first prompt,
from the first 64 KiB), its project (the cwd it was run in), when it was last
written, and what confabd knows of it locally:

- `syncing`: a worker runs it now (the master said so);
- `pending`: its State file is there, so a master will sync it (or already
  tried and kept it: `confabctl status` says why);
- `archived`: it is in the local archive, with every line (`archived N/M`
  when the archive holds fewer lines than the file);
- `-`: nothing local says; after a finished sync to a backend nothing is kept
  locally (`confabctl save ID` uploads it once, and is a no-op for lines the
  backend already has).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Optional

from . import client, local_sessions, paths
from .providers import CLAUDE_CODE, get
from .providers.base import Facts
from .providers.detect import LABELS

HEAD_BYTES = 64 << 10
DURATION = re.compile(r"(\d+)([smhdw])\Z")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str) -> float:
    """`5d`, `12h`, `30m`, `2w`, `90s` as seconds; ValueError otherwise."""
    match = DURATION.match(text.strip())
    if not match:
        raise ValueError(f"--since {text!r}: expected a number and a unit, e.g. 5d, 12h, 30m")
    return int(match.group(1)) * UNIT_S[match.group(2)]


def claude_projects_dir(home: str, env=None) -> str:
    return local_sessions.claude_projects_dir(home, env)


def facts_of(path: str, provider: str = CLAUDE_CODE) -> Facts:
    facts = get(provider).facts()  # each agent's lines say their title differently
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        return facts
    lines = head.split(b"\n")[:-1]  # complete lines only
    facts.learn(lines)
    return facts


def list_sessions(home: str, since_s: Optional[float] = None, now: Optional[float] = None,
                  provider: Optional[str] = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    running = _running_sessions()
    sync_dir = paths.sync_dir(home, os.environ)
    archived = _archived(home)
    rows = []
    for session in local_sessions.local_sessions(home, provider=provider):
        if since_s is not None and now - session.mtime > since_s:
            continue
        facts = facts_of(session.path, session.provider)
        rows.append({
            "external_id": session.external_id,
            "provider": session.provider,
            "title": facts.summary or facts.first_user_message,
            "project": facts.cwd,
            "modified_at": session.mtime,
            "transcript_path": session.path,
            "local": _local_state(session.external_id, session.path, running, sync_dir, archived),
        })
    rows.sort(key=lambda r: r["modified_at"], reverse=True)
    return rows


def _running_sessions() -> set[str]:
    try:
        reply, _path, _system = client.request_any({"type": "status"}, timeout=5.0)
    except (client.NoMaster, client.ProtocolError, OSError):
        return set()
    return {s["external_id"] for s in reply.get("sessions") or []}


def _archived(home: str) -> dict[str, dict]:
    from .config import load_settings
    from .sinks.archive import list_sessions as archive_sessions

    try:
        settings = load_settings(paths.user_settings_path(home))
        return {s["external_id"]: s for s in archive_sessions(settings.archive_path or paths.default_archive_path(home))}
    except Exception:  # noqa: BLE001 - an unreadable archive or config only means "not known"
        return {}


def _local_state(external_id: str, path: str, running: set, sync_dir: str, archived: dict) -> str:
    if external_id in running:
        return "syncing"
    if os.path.exists(paths.state_path(sync_dir, external_id)):
        return "pending"
    entry = archived.get(external_id)
    if entry:
        held = (entry["files"].get(os.path.basename(path)) or {}).get("lines", 0)
        total = _complete_lines(path)
        return "archived" if held >= total else f"archived {held}/{total}"
    return "-"


def _complete_lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0


def resolve_targets(home: str, targets: list[str], every: bool, since_s: Optional[float]) -> list[str]:
    """Transcript paths for `confabctl save`: paths as given, ids and unique id prefixes looked up,
    or (`every`) every session, oldest first; ValueError naming what matched nothing or too much."""
    sessions = [(s.path, s) for s in local_sessions.local_sessions(home)]
    if every:
        now = time.time()
        chosen = [(s.mtime, path) for path, s in sessions if since_s is None or now - s.mtime <= since_s]
        return [path for _mtime, path in sorted(chosen)]
    resolved = []
    for target in targets:
        if os.sep in target or target.endswith(".jsonl"):
            resolved.append(target)
            continue
        from .records import validate_external_id

        validate_external_id(target)  # InvalidExternalId, a ValueError, says what an id looks like
        ids = {s.external_id: path for path, s in sessions}
        matches = [target] if target in ids else sorted(i for i in ids if i.startswith(target))
        if not matches:
            raise ValueError(f"no transcript for session {target} of any agent on this machine (`confabctl list` shows them)")
        if len(matches) > 1:
            raise ValueError(f"{target!r} is the start of {len(matches)} sessions ({', '.join(matches[:4])}"
                             f"{', ...' if len(matches) > 4 else ''}); give more of the id")
        resolved.append(ids[matches[0]])
    return resolved


def format_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def run_list(args) -> int:
    import sys

    from .text import printable

    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        sys.stderr.write(f"confabctl: {exc}\n")
        return 2
    provider = getattr(args, "provider", None)
    rows = list_sessions(paths.home_dir(), since, provider=provider)
    if args.json:
        print(json.dumps({"sessions": rows}, indent=2))
        return 0
    if not rows:
        print(f"no {LABELS[provider] + ' ' if provider else ''}sessions found"
              + (f" in the last {args.since}" if args.since else ""))
        return 0
    now = time.time()
    print(f"{'ID':<8}  {'AGENT':<11}  {'AGE':>8}  {'LOCAL':<10}  {'PROJECT':<16}  TITLE")
    for r in rows:
        title = printable(" ".join((r["title"] or "-").split()))
        project = os.path.basename(r["project"].rstrip("/")) or "-"
        print(f"{r['external_id'][:8]:<8}  {r['provider']:<11}  {format_age(now - r['modified_at']):>8}  "
              f"{r['local']:<10}  {printable(project)[:16]:<16}  {title[:60]}")
    print(f"\n{len(rows)} session(s). `confabctl save ID` (or an id prefix) uploads one now.")
    return 0
