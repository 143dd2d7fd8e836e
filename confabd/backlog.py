"""How many complete lines each file of a session has: the other half of "behind".

behind = complete lines in the files - lines the sink confirmed. The engine
reads only what it sends; while the backend is down it sends nothing, yet
Claude Code keeps writing, and status must say how far behind the session
falls. `LineCounter` counts newline-terminated lines incrementally: it keeps
(inode, offset, lines) per file and reads only what was appended since (an
idle file costs one stat). A file that shrank or was replaced is counted
again from the start. A half-written last line is not counted, as it is not
sent. These counts are for people and metrics; delivery never uses them.
"""

from __future__ import annotations

import os

from .transcript import open_regular

READ_PIECE = 1 << 20


class _Count:
    __slots__ = ("inode", "offset", "lines")

    def __init__(self):
        self.inode, self.offset, self.lines = 0, 0, 0


class LineCounter:
    def __init__(self):
        self._counts: dict[str, _Count] = {}

    def complete_lines(self, files: dict[str, tuple[str, bool]]) -> dict[str, int]:
        """{file name: complete lines} for {file name: (path, follow a symlink)}; a file that
        cannot be read now keeps its last count."""
        return {name: self._count(path, follow) for name, (path, follow) in files.items()}

    def _count(self, path: str, follow: bool) -> int:
        c = self._counts.setdefault(path, _Count())
        try:  # agent files found by discovery are never followed (as the engine reads them)
            fd = open_regular(path, os.O_RDONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
        except OSError:
            return c.lines
        try:
            info = os.fstat(fd)
            if info.st_ino != c.inode or info.st_size < c.offset:
                c.inode, c.offset, c.lines = info.st_ino, 0, 0
            while c.offset < info.st_size:
                piece = os.pread(fd, READ_PIECE, c.offset)
                end = piece.rfind(b"\n") + 1
                if not end:
                    if len(piece) < READ_PIECE:
                        break  # only a half-written line is left
                    # a line longer than a piece: find its end further on
                    end = self._next_newline(fd, c.offset + len(piece))
                    if end < 0:
                        break
                    c.lines += 1
                    c.offset = end
                    continue
                c.lines += piece.count(b"\n", 0, end)
                c.offset += end
        except OSError:
            pass
        finally:
            os.close(fd)
        return c.lines

    @staticmethod
    def _next_newline(fd: int, start: int) -> int:
        """The offset just past the next newline at or after `start`; -1 when there is none yet."""
        while True:
            piece = os.pread(fd, READ_PIECE, start)
            if not piece:
                return -1
            i = piece.find(b"\n")
            if i >= 0:
                return start + i + 1
            start += len(piece)
