"""The sync engine: one session's files delivered to one sink, exactly once.

The sink's `last_synced_line` per file is the only position that counts. The
engine reads the lines after it, sends them in contiguous chunks, and moves
on only when the sink says so. After any failed chunk (other than 401/403/404)
it asks `init` again before sending anything: the chunk may have been stored
even though its answer was lost.

The engine never sleeps or retries on a timer; the worker decides when to run
it again (and backs off). One call of `sync()` is one pass over all files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Callable, Iterable, Optional

import msgspec

from . import providers
from .capabilities import Capabilities
from .metadata import init_metadata
from .records import ChunkMetadata, FileProgress, GitInfo, InitRequest
from .sinks.base import (
    AuthFailed,
    Chunk,
    PayloadTooLarge,
    PositionMismatch,
    RequestRejected,
    SessionGone,
    Sink,
    Unavailable,
)
from .text import printable
from .transcript import Batch, LineReader, open_regular, tail_hash_of

log = logging.getLogger(__name__)

# The server reads at most 16 MiB of body; chunks are budgeted on their
# encoded size with 2 MiB to spare for the envelope, metadata and redaction.
CHUNK_BUDGET = 14 * 1024 * 1024
DISCOVERY_ROUNDS = 10
FACTS_SCAN_BYTES = 2 * 1024 * 1024
MAX_RESYNCS_PER_PASS = 5
TRUNCATED_HEAD_BYTES = 64 * 1024
MAX_PENDING_AGENTS = 4096  # agent IDs remembered while their files do not exist (a bound on State)

# The server refuses a file's chunks past 30,000. One chunk per sync cycle reaches
# that in ~250 active hours, so once a file has used 1/30 of the cap its chunks
# are spaced out, the spacing doubling with every further 1/6 of the cap: lines
# wait and go out together in fewer, larger chunks. Against the server's cap that
# is 30 s after 1,000 chunks, 60 s after 6,000 ... ~24 min near 29,000, and the
# cap is ~2,900 active hours away. The last 1/300 (100 chunks) is kept for final
# syncs. A final sync (and `save`) never waits.
SERVER_CHUNK_CAP = 30_000
CHUNK_SPACING_BASE_S = 30.0
CHUNK_SPACING_MAX_S = 3_600.0


def chunk_spacing(chunks: int, cap: int = SERVER_CHUNK_CAP) -> float:
    """Seconds a file with `chunks` accepted chunks waits between chunks outside a final sync."""
    used = chunks / cap
    if used >= 1 - 1 / 300:
        return float("inf")
    if used < 1 / 30:
        return 0.0
    return min(CHUNK_SPACING_MAX_S, CHUNK_SPACING_BASE_S * 2 ** ((used - 1 / 30) * 6))


class _AskAgain(Exception):
    """Internal: read the sink's position again (init) before the next chunk."""


class TrackedFile:
    """One file of the session: where it is, and what the sink holds of it."""

    def __init__(self, name: str, path: str, file_type: str):
        self.name = name
        self.path = path
        self.file_type = file_type
        self.reader = LineReader(path, follow_symlinks=file_type == "transcript")
        self.server_line: Optional[int] = None  # None until init told us
        self.max_lines: Optional[int] = None  # set after a 413, to send smaller chunks
        self.error = ""  # why this file is stuck, if it is
        self.blocked_at = 0  # a line this file cannot get past (too large, or refused by the sink)
        self.chunks = 0  # chunks the sink accepted for this file (as far as we heard)
        self.sidecar_sent = False  # its provider's sidecar was accepted (see Layout.chunk_extras)
        self.last_chunk_at = float("-inf")  # time.monotonic() of the last accepted chunk

    def progress(self) -> FileProgress:
        c = self.reader.cursor
        line = self.server_line or 0
        offset = c.offset if c.line == line else 0
        return FileProgress(last_synced_line=line, byte_offset=offset, inode=c.inode if offset else 0,
                            file_type=self.file_type, path=self.path, tail=c.tail if offset else "",
                            chunks=self.chunks, sidecar_sent=self.sidecar_sent)


class SessionSync:
    """Delivers one session (its transcript and subagent files) to a sink."""

    def __init__(
        self,
        external_id: str,
        transcript_path: str,
        sink: Sink,
        *,
        cwd: str = "",
        redact: Optional[Callable[[bytes], bytes]] = None,
        redact_lines: Optional[Callable[..., list[bytes]]] = None,
        oversized_lines: str = "stand-in",
        budget: int = CHUNK_BUDGET,
        progress: Optional[dict[str, FileProgress]] = None,
        pending_agents: Iterable[str] = (),
        on_chunk: Optional[Callable[[TrackedFile, int], None]] = None,
        on_agents_named: Optional[Callable[[], None]] = None,
        chunk_cap: int = SERVER_CHUNK_CAP,
        provider: Optional[providers.Provider] = None,
        model: str = "",
        on_read: Optional[Callable[[TrackedFile, int], None]] = None,
    ):
        self.provider = provider or providers.get()
        self.model = model  # the agent's model as its hook said (Cursor): on every transcript chunk
        self.external_id = external_id
        self.transcript_path = transcript_path
        self.sink = sink
        self.cwd = cwd
        self.redact = redact
        self.redact_lines = redact_lines  # `redact` over a batch at once (Redactor.redact_lines), when given
        self.oversized_lines = oversized_lines
        self.budget = budget
        self.on_chunk = on_chunk
        # Called when lines about to be sent name agents not seen before, before they
        # are sent: the worker saves State, so a kill after the sink committed that
        # chunk (and before we heard) still leaves the IDs for the next worker.
        self.on_agents_named = on_agents_named
        self.chunk_cap = chunk_cap
        self.on_read = on_read  # (file, bytes) per block read for a chunk, before it is sent (save's progress)
        # The sink's encoding of a block of lines, when it has one (the HTTP sink's JSON):
        # each block read is then encoded once, for the budget and for the body.
        self._encode: Optional[Callable[[list[bytes]], bytes]] = getattr(sink, "encode_lines", None)
        self.hurry = False  # a final sync or `save`: no chunk spacing
        self.session_id = ""
        self.needs_init = True
        self.facts = self.provider.facts()
        self.git_info: Optional[GitInfo] = None
        self.git_info_sent = False
        self.locator = self.provider.layout(transcript_path, external_id)
        self.capabilities = Capabilities(sink)
        self.files: dict[str, TrackedFile] = {}
        self._pending_agents: set[str] = set(pending_agents)
        main_name = transcript_path.rsplit("/", 1)[-1]
        self.main = self._track(main_name, transcript_path, "transcript")
        self._restore_offsets(progress or {})

    # -- public --------------------------------------------------------------

    def connect(self) -> None:
        """Create or resume the session on the sink; take the sink's line numbers as truth."""
        self._learn_facts_from_head()
        request = InitRequest(
            external_id=self.external_id,
            transcript_path=self.transcript_path,
            metadata=init_metadata(self.cwd or self.facts.cwd, self.facts.git_branch),
            provider=self.provider.name,
        )
        self.git_info = request.metadata.git_info
        response = self.sink.init(request)
        self.session_id = response.session_id
        known = {name: f.last_synced_line for name, f in response.files.items()}
        for name in known:
            if name not in self.files and not self._track_agent_file(name):
                if not self.locator.side_file_type(name):  # a hostile or confused backend: never a path to open
                    log.warning("%s: ignoring the sink's file name %s (not one this client sends)",
                                self.external_id, printable(repr(name))[:200])
        for f in self.files.values():
            f.server_line = known.get(f.name, 0)
        self.needs_init = False

    def sync(self) -> int:
        """One pass: discover files, deliver every complete new line. Returns lines delivered.

        Raises Unavailable (back off and call again), AuthFailed (re-read
        credentials), SessionGone (count it). A position disagreement is
        settled here by asking init again.
        """
        for _ in range(MAX_RESYNCS_PER_PASS):
            try:
                if self.needs_init:
                    self.connect()
                return self._deliver_all()
            except (PositionMismatch, _AskAgain) as exc:
                log.info("%s: %s; asking the sink for its position again", self.external_id, exc)
                self.needs_init = True
        raise Unavailable(f"{self.external_id}: the sink's position kept changing under us")

    def sync_until_idle(self) -> int:
        """Sync until a pass delivers nothing new (used for the final sync and `save`)."""
        total = 0
        while True:
            sent = self.sync()
            total += sent
            if not sent:
                return total

    def send_session_end(self, timestamp: str, payload: dict) -> None:
        if self.needs_init:
            self.connect()
        self.sink.send_event(self.session_id, "session_end", timestamp, payload)

    def progress(self) -> dict[str, FileProgress]:
        return {name: f.progress() for name, f in self.files.items()}

    def server_lines(self) -> dict[str, int]:
        return {name: f.server_line or 0 for name, f in self.files.items()}

    def errors(self) -> list[str]:
        return [f.error for f in self.files.values() if f.error]

    def blocked(self) -> dict[str, str]:
        """Files that cannot be delivered past a line: {name: why}."""
        return {f.name: f.error for f in self.files.values() if f.blocked_at}

    def pending_agents(self) -> list[str]:
        """Agent IDs named in lines whose files were not found yet (persisted in State)."""
        return sorted(self._pending_agents)

    # -- delivery ------------------------------------------------------------

    def _deliver_all(self) -> int:
        self.locator.collect()
        sent = 0
        for _ in range(DISCOVERY_ROUNDS):
            known = len(self.files)
            for f in list(self.files.values()):
                sent += self._deliver_file(f)
            self._discover()
            if len(self.files) == known:
                break
        return sent

    def _deliver_file(self, f: TrackedFile) -> int:
        sent = 0
        while not f.blocked_at and self._may_send(f):
            redacted_blocks: dict[int, list[bytes]] = {}
            batch = f.reader.read_batch((f.server_line or 0) + 1, self.budget, f.max_lines,
                                        self._block_encoder(redacted_blocks, f))
            if batch is None or (not batch.lines and not batch.oversized):
                return sent
            if batch.oversized:
                batch, lines = self._oversized_line(f, batch)
                if f.blocked_at:
                    return sent
            else:
                lines = batch.lines
            outgoing = self._outgoing(batch, lines, redacted_blocks)
            self._learn(f, lines, outgoing)
            sent += self._upload(f, batch, outgoing)
        return sent

    def _block_encoder(self, redacted_blocks: dict[int, list[bytes]], f: TrackedFile):
        """The reader's `encode`: the sink's encoding of a block's lines as they will
        be sent, so redacted first (one first pass per 1 MiB block, and the budget
        charges what is sent); the redacted lines are kept in `redacted_blocks` by
        the id of their encoding, which the batch holds."""
        if self._encode is None:
            return None
        redacting, on_read = bool(self.redact or self.redact_lines), self.on_read

        def encode(lines: list[bytes], block: bytes) -> bytes:
            if on_read:
                on_read(f, len(block))
            if not redacting:
                return self._encode(lines)
            outgoing = self.redact_lines(lines, block) if self.redact_lines else self._redacted(lines)
            body = self._encode(outgoing)
            redacted_blocks[id(body)] = outgoing
            return body

        return encode

    def _outgoing(self, batch: Batch, lines: list[bytes], redacted_blocks: dict[int, list[bytes]]) -> list[bytes]:
        """`lines` as they are sent: the encoded blocks' redacted lines, the rest redacted now."""
        if not redacted_blocks or lines is not batch.lines:
            return self._redacted(lines)
        outgoing: list[bytes] = []
        for _, body in batch.encoded:
            outgoing += redacted_blocks[id(body)]
        return outgoing + self._redacted(lines[len(outgoing):])

    def _may_send(self, f: TrackedFile) -> bool:
        """Chunk spacing (see chunk_spacing): a final sync always may."""
        if self.hurry:
            return True
        return time.monotonic() - f.last_chunk_at >= chunk_spacing(f.chunks, self.chunk_cap)

    def _redacted(self, lines: list[bytes]) -> list[bytes]:
        if self.redact_lines:
            return self.redact_lines(lines)
        return [self.redact(line) for line in lines] if self.redact else lines

    def _upload(self, f: TrackedFile, batch: Batch, lines: list[bytes]) -> int:
        """Send `lines` (already redacted) as the chunk at `batch.first_line`."""
        extras = None if f.sidecar_sent else self.locator.chunk_extras(f.name, f.file_type, f.path)
        chunk = Chunk(
            session_id=self.session_id,
            file_name=f.name,
            file_type=f.file_type,
            first_line=batch.first_line,
            lines=lines,
            metadata=self._metadata(f, extras),
            encoded=batch.encoded,  # the encoding of `lines` as sent (_block_encoder)
        )
        try:
            last = self.sink.upload_chunk(chunk)
        except PayloadTooLarge as exc:
            if len(lines) == 1:
                f.error = f"{f.name} line {chunk.first_line} is too large for the backend ({exc})"
                log.error("%s: %s", self.external_id, f.error)
                f.blocked_at = chunk.first_line
                self.needs_init = True
                return 0
            f.max_lines = max(1, len(lines) // 2)
            self.needs_init = True  # a proxy's 413: the chunk may have reached the server anyway
            raise _AskAgain(f"{f.name}: a chunk of {len(lines)} lines was too large; sending at most {f.max_lines}")
        except RequestRejected as exc:
            if "too many chunks" in str(exc).lower():
                f.error = (f"{f.name} has reached the backend's limit of chunks per file after {f.chunks} "
                           f"chunk(s) from this client; lines from {chunk.first_line} on cannot be delivered ({exc})")
            else:
                f.error = f"{f.name}: the sink refused lines {chunk.first_line}-{chunk.last_line}: {exc}"
            log.error("%s", f.error)
            f.blocked_at = chunk.first_line
            self.needs_init = True  # after any failed chunk, only init can tell what the sink holds
            return 0
        except (AuthFailed, SessionGone):
            raise
        except Exception:
            self.needs_init = True
            raise
        if chunk.metadata is not None and chunk.metadata.git_info is not None:
            self.git_info_sent = True
        if extras:
            f.sidecar_sent = True  # after a failed chunk (a sidecar's 500 too) the next one carries it again
        self._advance(f, batch, last, len(lines))
        return len(lines)

    def _advance(self, f: TrackedFile, batch: Batch, last: int, count: int) -> None:
        expected = batch.first_line + count - 1
        f.server_line = last
        f.chunks += 1
        f.last_chunk_at = time.monotonic()
        if last == expected:
            f.reader.remember(last, batch.end_offset, batch.inode, batch.end_tail)
        else:
            log.warning("%s: sink says last line %d, expected %d; re-reading position", f.name, last, expected)
            self.needs_init = True
        if self.on_chunk:
            self.on_chunk(f, count)

    def _oversized_line(self, f: TrackedFile, batch: Batch) -> tuple[Batch, list[bytes]]:
        """The next line is over the chunk budget: block the file, or send a marked stand-in."""
        line_no = batch.first_line
        size_mib = batch.oversized / (1 << 20)
        if self.oversized_lines == "block":
            f.blocked_at = line_no
            f.error = (f"{f.name} line {line_no} is {size_mib:.1f} MiB, over the {self.budget >> 20} MiB a chunk "
                       f"can carry; this file cannot sync past it (oversized_lines = \"stand-in\" sends a "
                       f"marked stand-in instead)")
            log.error("%s: %s", self.external_id, f.error)
            return batch, []
        f.error = f"{f.name} line {line_no} ({size_mib:.1f} MiB) was sent as a marked stand-in (size and sha256)"
        log.warning("%s: %s", self.external_id, f.error)
        stand_in = _truncated_stand_in(f.path, batch.start_offset, batch.oversized, line_no, f.file_type)
        end = batch.start_offset + batch.oversized + 1
        tail = tail_hash_of(f.path, end)
        return msgspec.structs.replace(batch, lines=[stand_in], end_offset=end, oversized=0, end_tail=tail), [stand_in]

    # -- discovery and facts -------------------------------------------------

    def _learn(self, f: TrackedFile, lines: list[bytes], outgoing: list[bytes]) -> None:
        """Agent IDs from the lines as read; the session's title and summary from
        the lines as sent (redacted), so metadata never holds what the lines do not."""
        joined = b"\n".join(lines)
        may_learn = getattr(self.facts, "may_learn_from", None)  # (Claude Code's facts know their needles)
        if f is self.main and (outgoing is lines or may_learn is None or may_learn(joined)):
            # (redacted lines are joined again only for a batch that can tell something)
            self.facts.learn(outgoing, joined if outgoing is lines else None)
        named = {a for a in self.locator.agents_named(joined) if a not in self._pending_agents
                 and self.locator.agent_file_name(a) not in self.files}
        if not named:
            return
        room = MAX_PENDING_AGENTS - len(self._pending_agents)
        if room < len(named):
            log.warning("%s: more than %d agent files named and not found; forgetting %d of them",
                        self.external_id, MAX_PENDING_AGENTS, len(named) - max(room, 0))
            named = set(sorted(named)[:max(room, 0)])
        self._pending_agents.update(named)
        if named and self.on_agents_named:
            self.on_agents_named()

    def _discover(self) -> None:
        for agent_id in list(self._pending_agents):
            name = self.locator.agent_file_name(agent_id)
            if name in self.files or self._track_agent_file(name):
                self._pending_agents.discard(agent_id)
        for name, path in self.locator.scan().items():
            if name not in self.files:
                self._track(name, path, "agent")
        self.capabilities.new_round()
        for name, (path, file_type, capability) in self.locator.scan_gated().items():
            if name not in self.files and self.capabilities.allows(file_type, capability):
                self._track(name, path, file_type)

    def _track_agent_file(self, name: str) -> Optional[TrackedFile]:
        """Track a file by a name the sink or a line gave: an agent file, or a workflow file
        the sink already holds lines of (so it takes them)."""
        path = self.locator.locate(name)
        return self._track(name, path, self.locator.side_file_type(name)) if path else None

    def _track(self, name: str, path: str, file_type: str) -> TrackedFile:
        f = TrackedFile(name, path, file_type)
        if not self.needs_init:
            f.server_line = 0  # new to the sink: init did not name it
        self.files[name] = f
        log.debug("%s: tracking %s (%s)", self.external_id, printable(path), file_type)
        return f

    def _restore_offsets(self, progress: dict[str, FileProgress]) -> None:
        """Reuse byte offsets from State as a cache (verified before use)."""
        for name, p in progress.items():
            f = self.files.get(name)
            if f is None and p.file_type == self.locator.side_file_type(name) != "" and self.locator.owns(name, p.path):
                f = self._track(name, p.path, p.file_type)
            if f is None:
                continue
            f.chunks = p.chunks
            f.sidecar_sent = p.sidecar_sent
            if p.byte_offset:
                f.reader.remember(p.last_synced_line, p.byte_offset, p.inode, p.tail)

    def _learn_facts_from_head(self) -> None:
        if self.facts.first_user_message:
            return
        try:
            with os.fdopen(open_regular(self.transcript_path), "rb") as fh:  # never a FIFO's blocking open
                head = fh.read(FACTS_SCAN_BYTES)
        except OSError:
            return
        self.facts.learn(self._redacted(head.split(b"\n")[:-1]))

    def _metadata(self, f: TrackedFile, extras: Optional[dict]) -> Optional[ChunkMetadata]:
        """The transcript's title, summary and git info; and any file's sidecar (`extras`)."""
        fields = self.locator.chunk_fields(f.name, f.file_type, f.path)
        if fields.get("summary"):
            fields["summary"] = self._redacted_text(fields["summary"])
        if f is not self.main:
            return ChunkMetadata(**(extras or {}), **fields) if extras or fields else None
        facts = self.facts
        fields = {"summary": facts.summary, "first_user_message": facts.first_user_message, "model": self.model,
                  **{k: v for k, v in fields.items() if v}}
        git = None if self.git_info_sent else self.git_info
        if not (git or extras or any(fields.values())):
            return None
        return ChunkMetadata(git_info=git, **fields, **(extras or {}))

    def _redacted_text(self, text: str) -> str:
        """Text that is not a line (a title from elsewhere) redacted as a line's string would be."""
        if not self.redact:
            return text
        try:
            value = msgspec.json.decode(self.redact(msgspec.json.encode(text)))
        except (msgspec.DecodeError, UnicodeDecodeError):
            return ""  # never the unredacted text
        return value if isinstance(value, str) else ""


def _truncated_stand_in(path: str, offset: int, size: int, line_no: int, file_type: str) -> bytes:
    """A valid JSON line that stands for an oversized one: its size, hash and head."""
    digest = hashlib.sha256()
    head = b""
    with os.fdopen(open_regular(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW * (file_type != "transcript")),
                   "rb") as fh:
        fh.seek(offset)
        remaining = size
        while remaining:
            block = fh.read(min(remaining, 1 << 20))
            if not block:
                break
            if len(head) < TRUNCATED_HEAD_BYTES:
                head += block[: TRUNCATED_HEAD_BYTES - len(head)]
            digest.update(block)
            remaining -= len(block)
    return msgspec.json.encode({
        "type": "confabd-truncated-line",
        "note": "a line too large for the backend; this stands in for it and keeps the numbering",
        "line": line_no,
        "original_bytes": size,
        "sha256": digest.hexdigest(),
        "head": head.decode("utf-8", "replace"),
    })
