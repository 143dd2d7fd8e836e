"""The Go confab CLI's two rules that act on a State file, re-implemented exactly, for tests.

From github.com/ConfabulousDev/confab (its HEAD as mirrored for this project):

- `pkg/daemon/state.go`: `LoadStateForProvider("claude-code", id)` reads
  `sync/claude-code/<id>.json`; when that file is missing it reads the legacy flat
  `sync/<id>.json`; when it exists but its daemon is not running and the legacy one's
  is, the legacy one wins. `IsDaemonRunning` is `os.FindProcess(pid).Signal(0) == nil`
  (pid <= 0, ESRCH and EPERM are all "not running"). A file that is not valid JSON for
  its `State` (`pid` an int, `started_at` an RFC 3339 `time.Time`) is an error.
- `cmd/spawn.go` `maybeSpawnDaemon` (called by `cmd/hook_userpromptsubmit.go` and the
  session-start hook): a load error is only logged; then a State whose daemon is running
  means "already running", anything else means it spawns its own uploader.
- `pkg/daemon/reaper.go` `ReapStaleStates`: for every State listed (flat files and every
  provider subdirectory; unreadable ones skipped), skip it when `started_at` is less than
  5 s ago or its pid is running, else delete its `inbox_path` and the State file.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

PROVIDER = "claude-code"
REAP_MIN_AGE_S = 5.0


class InvalidState(Exception):
    """What Go's json.Unmarshal into its State would refuse."""


def _parse_state(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise InvalidState(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidState(f"{path}: not an object")
    pid = data.get("pid", 0)
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise InvalidState(f"{path}: pid {pid!r} is not an int")
    started = data.get("started_at")
    if started is None:
        data["_started"] = datetime.min.replace(tzinfo=timezone.utc)  # Go's zero time
    else:
        try:  # time.Time's UnmarshalJSON: RFC 3339 or it fails
            data["_started"] = datetime.fromisoformat(started.replace("Z", "+00:00"))
        except (AttributeError, ValueError):
            raise InvalidState(f"{path}: started_at {started!r} is not RFC 3339") from None
        if data["_started"].tzinfo is None:
            raise InvalidState(f"{path}: started_at {started!r} has no zone")
    data["_path"] = path
    return data


def is_process_running(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError:  # ESRCH and EPERM alike
        return False
    return True


def load_state(sync_dir: Path, external_id: str) -> Optional[dict]:
    namespaced = _parse_state(sync_dir / PROVIDER / f"{external_id}.json")
    if namespaced is None:
        return _parse_state(sync_dir / f"{external_id}.json")
    if not is_process_running(namespaced.get("pid", 0)):
        legacy = _parse_state(sync_dir / f"{external_id}.json")
        if legacy is not None and is_process_running(legacy.get("pid", 0)):
            return legacy
    return namespaced


def prompt_hook_would_spawn(sync_dir: Path, external_id: str) -> bool:
    """Would `confab hook user-prompt-submit` start its own uploader for this session now?"""
    try:
        state = load_state(sync_dir, external_id)
    except InvalidState:
        state = None  # logged as a warning, then it spawns
    return not (state is not None and is_process_running(state.get("pid", 0)))


def _all_states(sync_dir: Path) -> list[dict]:
    states = []
    try:
        entries = sorted(sync_dir.iterdir())
    except FileNotFoundError:
        return states
    for entry in entries:
        candidates = sorted(entry.iterdir()) if entry.is_dir() else [entry]
        for path in candidates:
            if path.is_dir() or path.suffix != ".json":
                continue
            try:
                state = _parse_state(path)
            except InvalidState:
                continue  # "Skipping invalid state file"
            if state is not None:
                states.append(state)
    return states


def reap(sync_dir: Path) -> list[str]:
    """ReapStaleStates: the external ids whose State (and inbox) it deleted."""
    reaped = []
    now = datetime.now(timezone.utc)
    for state in _all_states(sync_dir):
        if (now - state["_started"]).total_seconds() < REAP_MIN_AGE_S:
            continue
        if is_process_running(state.get("pid", 0)):
            continue
        if state.get("inbox_path"):
            try:
                os.remove(state["inbox_path"])
            except FileNotFoundError:
                pass
        state["_path"].unlink(missing_ok=True)
        reaped.append(state.get("external_id", ""))
    return reaped
