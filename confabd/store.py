"""State and inbox files on disk: the only state shared between processes.

Rules that make `kill -9` at any instant safe:
- State is replaced atomically (temp file in the same dir, fsync, rename), so a
  reader sees the old or the new record, never half of one.
- The inbox is appended with O_APPEND, one record per line; a line torn by a
  crash is skipped when read, the records before and after it survive.
- Every file is created 0600 inside a 0700 dir, opened with O_NOFOLLOW so a
  planted symlink is never followed.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from typing import Iterator, Optional

import msgspec

from . import paths
from .fileio import append_line, atomic_write, ensure_private_dir, read_private_file, unlink_if_present
from .errors import CorruptRecord
from .records import InboxRecord, State, validate_external_id

log = logging.getLogger(__name__)

STATE_SUFFIX = ".json"
INBOX_SUFFIX = ".inbox.jsonl"
INVALID_SUFFIX = ".invalid"  # <id>.json.invalid: an invalid State, kept for a human to look at
CLAIMED_INBOX_SUFFIX = ".inbox-claimed.jsonl"

_state_decoder = msgspec.json.Decoder(State)
_inbox_decoder = msgspec.json.Decoder(InboxRecord)
_encoder = msgspec.json.Encoder()


def utc_now() -> str:
    """RFC 3339 timestamp in UTC, as the original client writes them."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SyncDir:
    """One sync dir: `<dir>/<external_id>.json` and `<dir>/<external_id>.inbox.jsonl`."""

    def __init__(self, path: str):
        self.path = path

    def state_path(self, external_id: str) -> str:
        return paths.state_path(self.path, validate_external_id(external_id))

    def inbox_path(self, external_id: str) -> str:
        return paths.inbox_path(self.path, validate_external_id(external_id))

    # -- State ---------------------------------------------------------------

    def load_state(self, external_id: str) -> Optional[State]:
        """The State of a session, None when there is none; CorruptRecord when unreadable."""
        return load_state_file(self.state_path(external_id))

    def save_state(self, state: State) -> None:
        ensure_private_dir(self.path)
        atomic_write(self.state_path(state.external_id), _encoder.encode(state))

    def set_aside_invalid_state(self, external_id: str) -> Optional[State]:
        """An invalid State: renamed to `<id>.json.invalid` (one bad value must not cost the
        rest), and what of it is valid, field by field (salvage_state); None: nothing."""
        path = self.state_path(external_id)
        try:
            data = read_private_file(path)
            os.replace(path, path + INVALID_SUFFIX)
        except OSError as exc:
            log.warning("%s: cannot set the invalid State aside (%s)", path, exc.strerror or exc)
            return None
        salvaged = salvage_state(data, external_id)
        log.warning("%s: invalid State kept as %s%s", path, path + INVALID_SUFFIX,
                    "; its valid fields are kept" if salvaged else "; nothing in it was usable")
        return salvaged

    def claimed_inbox_path(self, external_id: str) -> str:
        return self.inbox_path(external_id)[: -len(INBOX_SUFFIX)] + CLAIMED_INBOX_SUFFIX

    def delete_session(self, external_id: str) -> None:
        """Remove all of a session's files: State, inbox, claimed inbox (missing files are fine)."""
        for path in (self.inbox_path(external_id), self.claimed_inbox_path(external_id),
                     self.state_path(external_id)):
            unlink_if_present(path)

    def close_session(self, external_id: str) -> None:
        """A finished run's cleanup: its State and the inbox it claimed.

        A live inbox written after the claim belongs to a later run of the
        same session (`claude --continue`) and is left for that run's worker.
        """
        for path in (self.claimed_inbox_path(external_id), self.state_path(external_id)):
            unlink_if_present(path)

    def list_states(self) -> list[State]:
        """Every readable State in the dir; corrupt ones are skipped with a warning."""
        states = []
        for external_id in self.external_ids():
            try:
                state = self.load_state(external_id)
            except CorruptRecord as exc:
                log.warning("skipping %s", exc)
                continue
            if state is not None:
                states.append(state)
        return states

    def list_states_with_end(self) -> list[tuple[State, bool]]:
        """Every readable State, with whether its inbox holds a session_end (what adoption needs)."""
        return [(state, any(r.type == "session_end" for r in self.read_inbox(state.external_id)))
                for state in self.list_states()]

    def external_ids(self) -> Iterator[str]:
        try:
            names = sorted(os.listdir(self.path))
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(STATE_SUFFIX) and not name.startswith("."):
                external_id = name[: -len(STATE_SUFFIX)]
                try:
                    yield validate_external_id(external_id)
                except ValueError:
                    log.warning("ignoring %s: not a valid session file name", name)

    # -- Inbox ---------------------------------------------------------------

    def append_inbox(self, external_id: str, record: InboxRecord) -> None:
        """Append one record as one line, in one write(2) on an O_APPEND fd."""
        ensure_private_dir(self.path)
        append_line(self.inbox_path(external_id), _encoder.encode(record))

    def read_inbox(self, external_id: str) -> list[InboxRecord]:
        return read_inbox_file(self.inbox_path(external_id))

    def claim_inbox(self, external_id: str) -> list[InboxRecord]:
        """Move the live inbox aside for the run that is finishing, and read it.

        The rename is atomic: a hook appending afterwards creates a fresh
        inbox for the next run instead of writing into one about to be
        deleted. Idempotent: a worker restarted mid-finish reads the same
        claimed records again.
        """
        claimed = self.claimed_inbox_path(external_id)
        if not os.path.lexists(claimed):
            try:
                os.rename(self.inbox_path(external_id), claimed)
            except FileNotFoundError:
                return []
        return read_inbox_file(claimed)


# ---------------------------------------------------------------------------
# Reading records from files.


def load_state_file(path: str) -> Optional[State]:
    try:
        data = read_private_file(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CorruptRecord(path, exc.strerror or str(exc)) from exc
    if not data.strip():
        raise CorruptRecord(path, "empty file")
    try:
        return _state_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise CorruptRecord(path, str(exc)) from exc


def salvage_state(data: bytes, external_id: str) -> Optional[State]:
    """The valid part of an invalid State: each field checked on its own, each file's
    progress on its own; invalid ones are dropped (the backend keeps the position)."""
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("transcript_path"), str):
        return None
    base = {"external_id": external_id, "transcript_path": raw["transcript_path"]}
    kept = dict(base)
    for name, value in raw.items():
        if name in base or name not in State.__struct_fields__:
            continue
        if name == "files" and isinstance(value, dict):
            value = {f: p for f, p in value.items() if _valid(base | {"files": {f: p}})}
        if _valid(base | {name: value}):
            kept[name] = value
    return msgspec.convert(kept, State)


def _valid(fields: dict) -> bool:
    try:
        msgspec.convert(fields, State)
    except msgspec.ValidationError:
        return False
    return True


def read_inbox_file(path: str) -> list[InboxRecord]:
    """Every well-formed record; torn or corrupt lines are skipped with a warning."""
    try:
        data = read_private_file(path)
    except FileNotFoundError:
        return []
    except OSError as exc:  # e.g. ELOOP: a symlink planted in its place is never followed
        log.warning("%s: unreadable inbox, ignored (%s)", path, exc.strerror or exc)
        return []
    records = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(_inbox_decoder.decode(line))
        except msgspec.DecodeError as exc:
            log.warning("%s line %d: skipping a torn or corrupt inbox record (%s)", path, number, exc)
    return records
