"""The coding agents whose sessions confabd ships: one `Provider` per agent.

The master, the workers, the engine and the sinks never ask which agent a
session belongs to; they ask the session's provider object (see base.py):
how its parent process is recognised, which files belong to the session and
under which names, what extra metadata rides on a chunk, and whether its end
is reported to the backend. The hook side (what `confabctl hook ... --provider
NAME` does with an agent's hook input) lives in each provider's `hook` module,
which imports only the standard library (hooks must start fast).

Names are the wire names the server accepts on init (`provider`).
"""

from __future__ import annotations

import importlib

from .base import Provider

CLAUDE_CODE = "claude-code"
CODEX = "codex"
CURSOR = "cursor"
OPENCODE = "opencode"
#: Wire name -> the module (under confabd.providers) that holds its `PROVIDER`.
MODULES = {CLAUDE_CODE: "claude_code", CODEX: "codex", CURSOR: "cursor", OPENCODE: "opencode"}
NAMES = tuple(MODULES)
#: Agents the server knows that confabd does not ship yet (docs/PROVIDERS.md).
NOT_YET: tuple[str, ...] = ()


class UnknownProvider(ValueError):
    pass


def check_name(name: object) -> str:
    """`name` if confabd ships that agent's sessions, else UnknownProvider with the choices."""
    if isinstance(name, str) and name in MODULES:
        return name
    shown = repr(name)[:40]
    if name in NOT_YET:
        raise UnknownProvider(f"provider {shown} is not supported yet by confabd (supported: {', '.join(NAMES)})")
    raise UnknownProvider(f"unknown provider {shown} (expected one of {', '.join(NAMES)})")


def get(name: str = CLAUDE_CODE) -> Provider:
    """The provider object for a wire name (UnknownProvider for any other)."""
    module = importlib.import_module(f"{__name__}.{MODULES[check_name(name)]}")
    return module.PROVIDER
