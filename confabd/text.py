"""Outside text made safe to show: on a terminal, in a log line.

A backend's error text, a transcript path, a session's last error: none of it
is ours, and any of it may carry an escape sequence (which a terminal obeys:
retitle, clear, rewrite what is shown) or a newline (which forges a line in a
log). `printable` shows such characters as visible escapes instead.

Imports nothing: `confabctl status` uses it.
"""

import logging


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object) -> str:
    """`text` with every non-printable character (controls, escapes, line and
    paragraph separators, bidi overrides, other format characters) written as
    `\\xNN` / `\\uNNNN`. Printable text, the usual case, is returned as is."""
    text = text if isinstance(text, str) else str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


class SafeFormatter(logging.Formatter):
    """A log formatter after which one record is one line of printable text.

    The message (with its arguments, which carry outside text such as paths)
    is escaped whole; a traceback keeps its own line breaks, but each of its
    lines is escaped and indented so that it cannot pass for a record of its own.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + printable(line) for line in text.split("\n"))
