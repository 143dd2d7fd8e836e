"""A stand-in for Claude Code, shared by the tests and the benchmarks.

A Python script named `claude` (so its command line names `claude`, as the
master looks for), which runs each hook the way the real binary does: as its
child through `/bin/sh -c`. It reads `<event> <payload file>` lines on stdin
and answers each with a JSON `[returncode, stdout, stderr]` line; `exit` ends it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

_SCRIPT = textwrap.dedent("""\
    import json, subprocess, sys
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "exit":
            break
        event, path = cmd.split(" ", 1)
        r = subprocess.run(["/bin/sh", "-c", f"{HOOK_COMMAND} hook {event} < {path}"],
                           capture_output=True, text=True)
        print(json.dumps([r.returncode, r.stdout, r.stderr]), flush=True)
    """)


def write_script(directory: Path, hook_command: str) -> Path:
    """`<directory>/claude`, running `<hook_command> hook <event>` (e.g. a confabctl path)."""
    script = directory / "claude"
    if not script.exists():
        directory.mkdir(parents=True, exist_ok=True)
        script.write_text(f"HOOK_COMMAND = {hook_command!r}\n" + _SCRIPT)
    return script
