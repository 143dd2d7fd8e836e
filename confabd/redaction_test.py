"""`confabctl redaction-test FILE`: what redaction would change in a transcript, before anything is sent.

It runs the user's own redaction settings (`redaction` in ~/.confab/config.json;
the default patterns when redaction is off there, and it says so) over every
line of FILE and reports which lines would change and how many secrets of each
type each holds. It never prints a secret: with --show, the lines are printed
as they would be sent, that is already redacted.
"""

from __future__ import annotations

import collections
import re
import sys
from typing import Optional, TextIO

from . import paths
from .config import load_backend_config
from .errors import ConfabdError
from .redact import Redactor
from .text import printable

MARKER = re.compile(r"\[REDACTED:([A-Z0-9_]+)\]")
SHOWN_CHARS = 300


def redactor_for(home: str, out: TextIO) -> Redactor:
    redaction = load_backend_config(home).redaction
    if not redaction or not redaction.get("enabled"):
        out.write("redaction is off in ~/.confab/config.json; shown with the default patterns "
                  '(turn it on with "redaction": {"enabled": true})\n')
        redaction = dict(redaction or {}, enabled=True)
    redactor = Redactor.from_config(redaction)
    if redactor is None:
        raise ConfabdError("the redaction settings in ~/.confab/config.json give no redactor")
    return redactor


def run_redaction_test(path: str, show: bool = False, home: Optional[str] = None,
                       out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        redactor = redactor_for(home or paths.home_dir(), out)
        changed, total, by_type = 0, 0, collections.Counter()
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                total += 1
                body = line[:-1] if line.endswith(b"\n") else line
                redacted = redactor.redact_line(body)
                if redacted == body:
                    continue
                changed += 1
                found = collections.Counter(MARKER.findall(redacted.decode("utf-8", "replace")))
                by_type.update(found)
                out.write(f"line {number}: " + ", ".join(f"{n} {t}" for t, n in sorted(found.items())) + "\n")
                if show:
                    out.write("    " + printable(redacted.decode("utf-8", "replace"))[:SHOWN_CHARS] + "\n")
    except (ConfabdError, OSError) as exc:
        err.write(f"confabctl redaction-test: {exc}\n")
        return 1
    summary = ", ".join(f"{n} {t}" for t, n in sorted(by_type.items())) or "nothing"
    out.write(f"{changed} of {total} lines would be redacted ({summary})\n")
    return 0
