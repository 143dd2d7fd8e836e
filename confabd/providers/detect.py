"""Which coding agents this user has, and `install-hooks`/`uninstall-hooks` for each of them.

An agent counts as installed when its own directory exists (it creates it on its first run, and
that is where our hook or plugin goes) or its program is on PATH:

| agent | its directory | its program |
|---|---|---|
| claude-code | `$CLAUDE_CONFIG_DIR`, else `~/.claude` | `claude` |
| codex | `$CONFAB_CODEX_DIR`, else `$CODEX_HOME`, else `~/.codex` | `codex` |
| cursor | `$CONFAB_CURSOR_DIR`, else `~/.cursor` | `cursor-agent` |
| opencode | `$CONFAB_OPENCODE_CONFIG_DIR`, else `$XDG_CONFIG_HOME/opencode`, else `~/.config/opencode` | `opencode` |

A parent such as `~/.config` is never enough: it exists on every desktop. Nothing is installed for
an agent that is not found, once any agent is; when none is, Claude Code's hooks are (the default
agent: what `install-hooks` always did, and what install-user.sh relies on before Claude Code's
first run). `--provider NAME` still names exactly one agent, found or not (the user asked for it).
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Callable, List, NamedTuple, Optional

from . import CLAUDE_CODE, CODEX, CURSOR, NAMES, OPENCODE

LABELS = {CLAUDE_CODE: "Claude Code", CODEX: "Codex", CURSOR: "Cursor", OPENCODE: "OpenCode"}
PROGRAMS = {CLAUDE_CODE: "claude", CODEX: "codex", CURSOR: "cursor-agent", OPENCODE: "opencode"}


class Agent(NamedTuple):
    name: str  # the provider's wire name
    directory: str  # where its settings live (whether or not it exists)
    found: str  # why it counts as installed ("~/.codex", "codex on PATH"); "" when not found


def agent_dir(name: str, env=None) -> str:
    env = os.environ if env is None else env
    if name == CLAUDE_CODE:
        return env.get("CLAUDE_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".claude")
    if name == CODEX:
        from .codex.rollouts import codex_dir

        return codex_dir(env)
    if name == CURSOR:
        from .cursor.paths import cursor_dir

        return cursor_dir(env)
    from .opencode.install import config_dir

    return config_dir(env)


def detect(name: str, env=None) -> Agent:
    env = os.environ if env is None else env
    directory = agent_dir(name, env)
    if os.path.isdir(directory):
        return Agent(name, directory, directory)
    program = shutil.which(PROGRAMS[name], path=env.get("PATH"))
    return Agent(name, directory, f"{PROGRAMS[name]} on PATH ({program})" if program else "")


def agents(env=None) -> List[Agent]:
    """Every agent confabd ships, found or not, in a fixed order."""
    return [detect(name, env) for name in NAMES]


def installed(env=None) -> List[Agent]:
    return [a for a in agents(env) if a.found]


def _why_not(agent: Agent) -> str:
    return f"not found (no {agent.directory}, no {PROGRAMS[agent.name]} on PATH)"


def for_each_agent(run: Callable[[str], int], verb: str, out=None, env=None) -> int:
    """`run(name)` for every installed agent, a line per agent first; the worst exit code.

    No agent found at all (confabd installed before any agent's first run, as install-user.sh does):
    Claude Code, confabd's default agent, as `install-hooks` always did, and it says so."""
    out = out if out is not None else sys.stdout
    every = agents(env)
    if not any(a.found for a in every):
        for agent in every:
            print(f"{LABELS[agent.name]}: {_why_not(agent)}", file=out)
        print(f"no coding agent found: {verb} Claude Code's hooks (the default agent); "
              f"--provider NAME names another ({', '.join(NAMES)})", file=out)
        out.flush()
        return run(CLAUDE_CODE)
    worst = 0
    for agent in every:
        if not agent.found:
            print(f"{LABELS[agent.name]}: {_why_not(agent)}; skipped", file=out)
            continue
        print(f"{LABELS[agent.name]} (found: {agent.found}): {verb}", file=out)
        out.flush()
        worst = max(worst, _run_one(run, agent))
    return worst


def _run_one(run: Callable[[str], int], agent: Agent) -> int:
    """One agent's installer; a file it cannot write fails that agent only, said plainly."""
    try:
        return run(agent.name)
    except OSError as exc:
        print(f"confabctl: {LABELS[agent.name]}: {exc.strerror or exc}"
              f"{': ' + exc.filename if isinstance(exc.filename, str) else ''}; the other agents go on "
              f"(once it is fixed: the same command with --provider {agent.name})", file=sys.stderr)
        return 1


def one_or_all(provider: Optional[str], settings: Optional[str]) -> Optional[str]:
    """The one agent a command line names: `--provider`, or Claude Code for a bare `--settings FILE`
    (its settings.json, as before providers); None means every agent found."""
    if provider:
        return provider
    return CLAUDE_CODE if settings else None
