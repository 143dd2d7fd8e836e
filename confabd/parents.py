"""Who is Claude Code? Finding the process that ran a hook, and knowing it again later.

A process is identified by its pid *and* its create time (psutil), so a
recycled pid is never mistaken for the Claude Code that started a session.
Used by the master (registration, adoption, parent watch) and by the hook's
no-master fallback, which records the parent in the State it leaves behind.
"""

from __future__ import annotations

import re
from typing import Optional

import psutil

CLAUDE_RE = re.compile(r"\bclaude\b", re.IGNORECASE)


def process_identity(pid: int) -> Optional[tuple[int, float, str]]:
    """(pid, create_time, cmdline) of a live process, None if it does not exist."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return pid, proc.create_time(), " ".join(proc.cmdline())
    except (psutil.Error, ValueError):
        return None


def find_claude(hook_pid: int, parent_pid: int, hint: int, pattern: re.Pattern = CLAUDE_RE) -> tuple[int, float]:
    """The Claude Code process that ran a hook: (pid, create_time), (0, 0.0) if not found.

    CLAUDE_PID (`hint`) wins when it is a live ancestor of the hook; otherwise
    the hook's parent or grandparent whose command line names `claude` (or matches
    `pattern`: the session's provider says how its agent's process is recognised).
    """
    ancestors: list[psutil.Process] = []
    try:
        proc = psutil.Process(parent_pid)
        if hook_pid:
            try:
                proc = psutil.Process(hook_pid).parent() or proc
            except psutil.Error:
                pass
        while proc is not None and proc.pid > 1 and len(ancestors) < 16:
            ancestors.append(proc)
            proc = proc.parent()
    except psutil.Error:
        pass
    if hint:
        for proc in ancestors:
            if proc.pid == hint:
                try:
                    return proc.pid, proc.create_time()
                except psutil.Error:
                    break
    for proc in ancestors[:2]:
        try:
            if pattern.search(" ".join(proc.cmdline()) or proc.name()):
                return proc.pid, proc.create_time()
        except psutil.Error:
            continue
    return 0, 0.0


def same_process(pid: int, create_time: float) -> bool:
    """Is `pid` still the process that had `create_time` (not a recycled PID)?"""
    found = process_identity(pid)
    return found is not None and abs(found[1] - create_time) < 0.05
