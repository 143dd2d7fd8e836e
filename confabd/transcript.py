"""Reading a growing JSONL file by line number, exactly as the server counts.

Line N is the N-th newline-terminated line (empty lines count). A final line
without its newline is still being written by Claude Code and is never read.
Lines are returned as raw bytes without the `\\n`; a trailing `\\r` is kept, so
the receiver can rebuild the file byte-for-byte.

The server's `last_synced_line` is the position; the byte offset of a line is
only a cache. It is trusted when the file is the same inode, at least that
long, and the bytes before it hash as they did when the cursor was taken (up
to TAIL_BYTES of them, so the line before it and usually several more; the
newline before it included): a truncation in place that happens to put a
newline at the old offset does not pass. Otherwise lines are counted again
from the start.

Only regular files are read: a FIFO would block the open, /dev/zero or a
directory would never end or fail every read. Files are opened O_NONBLOCK
(which makes the open of a FIFO return at once) and refused unless fstat says
regular, with `NotRegularFile`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from typing import Callable, Optional

import msgspec

READ_BLOCK = 1 << 20
TAIL_BYTES = 4096  # how much before a cached offset must hash the same to trust it


class NotRegularFile(OSError):
    """The path is a FIFO, a device, a directory...: never read."""

    def __init__(self, path: str, mode: int):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        super().__init__(errno.EINVAL, f"not a regular file ({kind})", path)


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def open_regular(path: str, flags: int = os.O_RDONLY | os.O_CLOEXEC) -> int:
    """An fd of `path`, opened without blocking and only if it is a regular file."""
    fd = os.open(path, flags | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def tail_hash(fd: int, offset: int) -> str:
    """sha256 (hex, shortened) of the up to TAIL_BYTES bytes before `offset`; "" at offset 0."""
    if offset <= 0:
        return ""
    start = max(0, offset - TAIL_BYTES)
    data = os.pread(fd, offset - start, start)
    return hashlib.sha256(data).hexdigest()[:32]


def tail_hash_of(path: str, offset: int) -> str:
    """`tail_hash` of the file at `path` (a regular file), "" when it cannot be read."""
    try:
        fd = open_regular(path)
    except OSError:
        return ""
    try:
        return tail_hash(fd, offset)
    finally:
        os.close(fd)


class Cursor(msgspec.Struct):
    """Where line `line + 1` starts in the file with inode `inode`: byte `offset`,
    preceded by bytes whose `tail_hash` is `tail`."""

    line: int = 0
    offset: int = 0
    inode: int = 0
    tail: str = ""


class Batch(msgspec.Struct, frozen=True):
    """Complete lines `first_line .. first_line+len(lines)-1`, ending at byte `end_offset`."""

    first_line: int
    lines: list[bytes]
    start_offset: int
    end_offset: int
    inode: int
    oversized: int = 0  # > 0: the next line alone is this many bytes, over the budget
    end_tail: str = ""  # tail_hash at end_offset
    # With an `encode` function (read_batch): the lines as the sink will send them, one
    # (line count, encoded bytes) per whole block read, covering the first lines of
    # `lines` in order; the lines after them (the block that overflowed) are not encoded.
    encoded: tuple = ()


def encoded_size(line: bytes) -> int:
    """The bytes this line takes as a JSON string in a chunk body, as budgeted.

    `"` and `\\` escape to two bytes; two quotes and a comma around it. (The
    original client counted raw length + 4, which escape-heavy lines exceed.)
    Control bytes, which escape to six, are not counted: valid JSONL has none
    (JSON escapes them), and the 2 MiB between the chunk budget and the
    server's limit absorbs a few; past that, the HTTP sink's check of the real
    body refuses the chunk and the engine sends fewer lines.
    """
    return len(line) + line.count(b'"') + line.count(b"\\") + 3


def block_cost(block: bytes, count: int, room: int) -> Optional[int]:
    """The summed `encoded_size` of the `count` newline-terminated lines that
    make up `block` (its newlines are not part of any line), or None when that
    exceeds `room`. Two C-speed passes over the block instead of two per line.
    """
    base = len(block) + 2 * count  # + 3 per line, - the newline of each
    if base > room:
        return None
    cost = base + block.count(b'"') + block.count(b"\\")
    return cost if cost <= room else None


class LineReader:
    """Reads complete lines of one file starting at a given line number."""

    def __init__(self, path: str, follow_symlinks: bool = True):
        self.path = path
        self.cursor = Cursor()
        # Agent files are opened only as what discovery found: a regular file. A
        # symlink put in its place later is not followed (it reads as missing).
        self._open_flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)

    def read_batch(self, first_line: int, budget: int, max_lines: Optional[int] = None,
                   encode: Optional[Callable[[list[bytes], bytes], bytes]] = None) -> Optional[Batch]:
        """Lines from `first_line` on, as many as fit `budget` (encoded size).

        None when the file does not exist. An empty batch when there is no new
        complete line. When the very next line alone exceeds the budget, the
        batch is empty and `oversized` gives that line's length.

        `encode` (the engine's, when the sink sends an encoding): a block's lines
        (and the block as read: the lines, each ending in a newline) as the bytes
        they take in the body. Each whole block is then encoded once and
        charged its exact size, and the encoding travels in `Batch.encoded`.
        """
        try:
            fd = open_regular(self.path, self._open_flags)
        except FileNotFoundError:
            return None
        except NotRegularFile:
            raise
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink where O_NOFOLLOW was asked
                return None
            raise
        with os.fdopen(fd, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            start = self._offset_of_line(f, st, first_line)
            if start is None:  # the file has fewer complete lines than that
                return Batch(first_line, [], st.st_size, st.st_size, st.st_ino)
            batch = self._collect(f, st, first_line, start, budget, max_lines, encode)
            return msgspec.structs.replace(batch, end_tail=tail_hash(f.fileno(), batch.end_offset))

    def remember(self, line: int, offset: int, inode: int, tail: str) -> None:
        """Record that line `line + 1` starts at `offset` (after the server confirmed `line`)."""
        self.cursor = Cursor(line, offset, inode, tail)

    # -- internals -----------------------------------------------------------

    def _offset_of_line(self, f, st, line_no: int) -> Optional[int]:
        """Byte offset where line `line_no` starts, or None if the file has no such line yet."""
        target = line_no - 1  # number of complete lines before it
        base_line, base_offset = 0, 0
        c = self.cursor
        if c.inode == st.st_ino and c.line <= target and self._still_valid(f, st, c):
            base_line, base_offset = c.line, c.offset
        offset = _skip_lines(f, base_offset, target - base_line)
        if offset is None:
            return None
        if offset != c.offset or target != c.line or st.st_ino != c.inode:
            self.cursor = Cursor(target, offset, st.st_ino, tail_hash(f.fileno(), offset))
        return offset

    @staticmethod
    def _still_valid(f, st, c: Cursor) -> bool:
        """The cached offset is where it was: the file is that long and the bytes
        before it are the ones seen then (an old State without a hash: recount)."""
        if c.offset == 0:
            return c.line == 0
        if c.offset > st.st_size or not c.tail:
            return False
        return tail_hash(f.fileno(), c.offset) == c.tail

    def _collect(self, f, st, first_line, start, budget, max_lines, encode=None) -> Batch:
        """Whole blocks of lines at a time while they fit: the budget is charged per
        block with its exact encoding (`encode`) or else C-speed byte counts
        (`block_cost`), and only the block that would overflow it is walked line
        by line."""
        lines: list[bytes] = []
        encoded: list[tuple[int, bytes]] = []
        covered = 0  # lines that `encoded` holds
        used = 0
        offset = start
        f.seek(start)
        pending = b""
        while True:
            block = f.read(READ_BLOCK)
            if not block:
                break
            if pending:
                block = pending + block
            cut = block.rfind(b"\n") + 1
            if cut:
                complete, pending = (block, b"") if cut == len(block) else (block[:cut], block[cut:])
                parts = complete.split(b"\n")
                parts.pop()  # the empty string after the last newline
                if max_lines is None or len(lines) + len(parts) <= max_lines:
                    if encode is not None and len(complete) + 2 * len(parts) <= budget - used:
                        body = encode(parts, complete)
                        cost = len(body) + 1  # and the comma before the next block
                        cost = cost if cost <= budget - used else None
                    else:
                        body, cost = None, block_cost(complete, len(parts), budget - used)
                    if cost is not None:
                        if body is not None and covered == len(lines):  # `encoded` stays a prefix
                            encoded.append((len(parts), body))
                            covered += len(parts)
                        lines += parts
                        used += cost
                        offset += cut
                        parts = ()
                for line in parts:  # this block does not fit whole: up to where it stops fitting
                    cost = encoded_size(line)
                    if used + cost > budget or (max_lines is not None and len(lines) >= max_lines):
                        return self._batch(first_line, lines, start, offset, st, 0 if lines else len(line), encoded)
                    lines.append(line)
                    used += cost
                    offset += len(line) + 1
            else:
                pending = block
            if len(pending) > budget:  # a single line longer than the budget, still growing or not
                if not lines:
                    size = _line_length(f, offset)
                    if size is not None:
                        return self._batch(first_line, [], start, offset, st, oversized=size)
                break
        return self._batch(first_line, lines, start, offset, st, 0, encoded)

    def _batch(self, first_line, lines, start, end, st, oversized=0, encoded=()) -> Batch:
        return Batch(first_line, lines, start, end, st.st_ino, oversized, encoded=tuple(encoded))


def _skip_lines(f, offset: int, count: int) -> Optional[int]:
    """Offset after `count` more newlines from `offset`, or None if the file ends first."""
    if count == 0:
        return offset
    f.seek(offset)
    while True:
        block = f.read(READ_BLOCK)
        if not block:
            return None
        found = block.count(b"\n")
        if found >= count:
            index = -1
            for _ in range(count):
                index = block.index(b"\n", index + 1)
            return offset + index + 1
        count -= found
        offset += len(block)


def _line_length(f, offset: int) -> Optional[int]:
    """Length of the complete line starting at `offset`, None if it has no newline yet."""
    f.seek(offset)
    length = 0
    while True:
        block = f.read(READ_BLOCK)
        if not block:
            return None
        index = block.find(b"\n")
        if index >= 0:
            return length + index
        length += len(block)

