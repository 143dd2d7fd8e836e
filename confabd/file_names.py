"""What a session file's `file_name` may be, for every sink: the server stores a name's `/`s as key
segments (providers.md §1.8: Cursor's `subagents/<id>.jsonl`), so a name is one or more segments,
none empty, `.` or `..`, and no backslash or NUL: never a way out of the session's own directory
when `archive export` writes it back."""

from __future__ import annotations

MAX_FILE_NAME_BYTES = 512


def file_name_problem(name: str) -> str:
    """Why `name` is not a file name a sink keeps; "" when it is."""
    if not name:
        return "file_name is required"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
        return f"file_name exceeds {MAX_FILE_NAME_BYTES} bytes"
    if "\\" in name or "\0" in name or any(part in ("", ".", "..") for part in name.split("/")):
        return "file_name must be a relative path of plain names (no empty, '.' or '..' part, no backslash)"
    return ""
