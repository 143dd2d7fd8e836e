"""How the master's log records are written: for the journal, or for a file or a terminal.

Under systemd, stderr is a stream to journald (`JOURNAL_STREAM` names its
device and inode). journald stamps every entry with its own time and the
process's pid, and reads a `<N>` prefix on each line as the syslog priority
(sd-daemon(3)); without one, every line is priority 6 ("info") and
`journalctl -p warning` shows nothing. So for the journal a record is
`<N>name LEVEL message`, each of its lines prefixed; elsewhere it keeps the
time and pid, which a file or a terminal does not add by itself.

Libraries' own records (urllib3, requests, backoff) are demoted to debug
(`QuietLibraries`): what they say at warning or error is false or said better
by us (backoff's "Giving up" about a request that is retried forever,
urllib3's "Retrying ..." and "Connection pool is full"), and ~300 characters
of repr each. The cause reaches the log in our own words (sinks/causes.py).
"""

from __future__ import annotations

import logging
import os

from .text import SafeFormatter

FILE_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"
JOURNAL_FORMAT = "%(name)s %(levelname)s %(message)s"

# sd-daemon(3) priorities: LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG (LOG_CRIT for critical).
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def priority(level: int) -> int:
    """The syslog priority of a logging level (a level between two takes the more severe)."""
    for threshold in sorted(PRIORITIES, reverse=True):
        if level >= threshold:
            return PRIORITIES[threshold]
    return 7


class JournalFormatter(SafeFormatter):
    """One record as journald wants it: no time or pid, `<N>` before each line."""

    def __init__(self):
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def talks_to_journal(stream, env=None) -> bool:
    """True when `stream` is the journal stream systemd gave us (JOURNAL_STREAM=<dev>:<inode>)."""
    env = os.environ if env is None else env
    expected = env.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


def formatter_for(handler: logging.Handler) -> logging.Formatter:
    stream = getattr(handler, "stream", None)
    if not isinstance(handler, logging.FileHandler) and talks_to_journal(stream):
        return JournalFormatter()
    return SafeFormatter(FILE_FORMAT)


LIBRARY_LOGGERS = frozenset(("urllib3", "requests", "backoff"))


class QuietLibraries(logging.Filter):
    """A handler filter: library records become debug records (shown only with --log-level debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] in LIBRARY_LOGGERS and record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True
