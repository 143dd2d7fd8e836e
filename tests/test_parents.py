"""Finding the agent that ran a hook among the hook's ancestors (confabd.parents), on real process trees.

The master reads /proc itself for this walk (the hook waits while it runs); what it returns must be
what psutil says of the same process, since the parent watch compares create times later.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import psutil
import pytest

from confabd.parents import find_claude, same_process
from tests.waiting import wait_until

# Each level starts the next and waits; the last one, "the hook", writes its pid and sleeps.
# argv: CHAIN pidfile word [exe word ...]: a level's own word is in its command line, the next
# levels' words too, the earlier levels' not.
CHAIN = """
import os, subprocess, sys, time
script, pidfile, word, rest = sys.argv[0], sys.argv[1], sys.argv[2], sys.argv[3:]
if rest:
    subprocess.run([rest[0], script, pidfile] + rest[1:])
else:
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(pidfile + ".tmp", pidfile)
    time.sleep(120)
"""


@pytest.fixture
def chain(tmp_path):
    """chain([(exe, word), ...]) -> pids, outermost first, innermost (the hook) last."""
    script = tmp_path / "chain.py"
    script.write_text(CHAIN)
    started = []

    def start(levels):
        pidfile = tmp_path / f"hook-{len(started)}.pid"
        argv = [levels[0][0], str(script), str(pidfile), levels[0][1]]
        for exe, word in levels[1:]:
            argv += [exe, word]
        proc = subprocess.Popen(argv, start_new_session=True)
        started.append(proc)
        wait_until(lambda: pidfile.exists() or proc.poll() is not None, what="the chain of processes")
        assert proc.poll() is None
        pids = [int(pidfile.read_text())]
        while len(pids) < len(levels):
            pids.insert(0, psutil.Process(pids[0]).ppid())
        assert pids[0] == proc.pid
        return pids

    yield start
    for proc in started:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait()


def test_the_agent_two_levels_up_is_found_with_psutils_create_time(chain):
    agent, shell, hook = chain([(sys.executable, "claude"), (sys.executable, "sh"), (sys.executable, "hook")])
    found = find_claude(hook, 0, 0)
    assert found == (agent, psutil.Process(agent).create_time())
    assert same_process(*found)
    assert find_claude(hook, 0, 0, re.compile(r"\bcodex\b")) == (0, 0.0)  # another agent's pattern


def test_the_agents_pid_hint_is_found_further_up(chain):
    pids = chain([(sys.executable, "agent")] + [(sys.executable, f"level{i}") for i in range(5)])
    assert find_claude(pids[-1], 0, hint=pids[0]) == (pids[0], psutil.Process(pids[0]).create_time())
    assert find_claude(pids[-1], 0, hint=1) == (0, 0.0)  # not an ancestor below pid 1: nothing


def test_a_parent_whose_name_holds_parentheses_and_spaces_is_read_right(chain, tmp_path):
    """The name in /proc/PID/stat ends at the *last* ')': a name like `x) (y z` must not shift the fields."""
    odd = tmp_path / "x) (y z"
    shutil.copy(sys.executable, odd)
    agent, middle, hook = chain([(sys.executable, "claude"), (str(odd), "sh"), (sys.executable, "hook")])
    assert psutil.Process(middle).name().startswith("x) (y")
    assert find_claude(hook, 0, 0) == (agent, psutil.Process(agent).create_time())


def test_a_hook_that_is_gone_falls_back_to_the_parent_pid_it_named(chain):
    agent, shell, hook = chain([(sys.executable, "claude"), (sys.executable, "sh"), (sys.executable, "hook")])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert find_claude(gone.pid, shell, 0) == (agent, psutil.Process(agent).create_time())
