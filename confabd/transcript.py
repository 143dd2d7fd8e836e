"""Reading a growing JSONL file by line number, exactly as the server counts.

Line N is the N-th newline-terminated line (empty lines count). A final line
without its newline is still being written by Claude Code and is never read.
Lines are returned as raw bytes without the `\\n`; a trailing `\\r` is kept, so
the receiver can rebuild the file byte-for-byte.

The server's `last_synced_line` is the position; the byte offset of a line is
only a cache. It is trusted when the file is the same inode, at least that
long, and the byte before it is a newline; otherwise lines are counted again
from the start (the file was truncated or replaced).
"""

from __future__ import annotations

import errno
import os
from typing import Optional

import msgspec

READ_BLOCK = 1 << 20


class Cursor(msgspec.Struct):
    """Where line `line + 1` starts in the file with inode `inode`: byte `offset`."""

    line: int = 0
    offset: int = 0
    inode: int = 0


class Batch(msgspec.Struct, frozen=True):
    """Complete lines `first_line .. first_line+len(lines)-1`, ending at byte `end_offset`."""

    first_line: int
    lines: list[bytes]
    start_offset: int
    end_offset: int
    inode: int
    oversized: int = 0  # > 0: the next line alone is this many bytes, over the budget


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

    def read_batch(self, first_line: int, budget: int, max_lines: Optional[int] = None) -> Optional[Batch]:
        """Lines from `first_line` on, as many as fit `budget` (encoded size).

        None when the file does not exist. An empty batch when there is no new
        complete line. When the very next line alone exceeds the budget, the
        batch is empty and `oversized` gives that line's length.
        """
        try:
            fd = os.open(self.path, self._open_flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink where O_NOFOLLOW was asked
                return None
            raise
        with os.fdopen(fd, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            start = self._offset_of_line(f, st, first_line)
            if start is None:  # the file has fewer complete lines than that
                return Batch(first_line, [], st.st_size, st.st_size, st.st_ino)
            return self._collect(f, st, first_line, start, budget, max_lines)

    def remember(self, line: int, offset: int, inode: int) -> None:
        """Record that line `line + 1` starts at `offset` (after the server confirmed `line`)."""
        self.cursor = Cursor(line, offset, inode)

    # -- internals -----------------------------------------------------------

    def _offset_of_line(self, f, st, line_no: int) -> Optional[int]:
        """Byte offset where line `line_no` starts, or None if the file has no such line yet."""
        target = line_no - 1  # number of complete lines before it
        base_line, base_offset = 0, 0
        c = self.cursor
        if c.inode == st.st_ino and c.line <= target and self._is_line_start(f, st, c.offset):
            base_line, base_offset = c.line, c.offset
        offset = _skip_lines(f, base_offset, target - base_line)
        if offset is None:
            return None
        self.cursor = Cursor(target, offset, st.st_ino)
        return offset

    @staticmethod
    def _is_line_start(f, st, offset: int) -> bool:
        if offset == 0:
            return True
        if offset > st.st_size:
            return False
        f.seek(offset - 1)
        return f.read(1) == b"\n"

    def _collect(self, f, st, first_line, start, budget, max_lines) -> Batch:
        """Whole blocks of lines at a time while they fit: the budget is charged per
        block with C-speed byte counts (`block_cost`), and only the block that
        would overflow it is walked line by line."""
        lines: list[bytes] = []
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
                    cost = block_cost(complete, len(parts), budget - used)
                    if cost is not None:
                        lines += parts
                        used += cost
                        offset += cut
                        parts = ()
                for line in parts:  # this block does not fit whole: up to where it stops fitting
                    cost = encoded_size(line)
                    if used + cost > budget or (max_lines is not None and len(lines) >= max_lines):
                        return self._batch(first_line, lines, start, offset, st, oversized=0 if lines else len(line))
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
        return self._batch(first_line, lines, start, offset, st)

    def _batch(self, first_line, lines, start, end, st, oversized=0) -> Batch:
        return Batch(first_line, lines, start, end, st.st_ino, oversized)


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

