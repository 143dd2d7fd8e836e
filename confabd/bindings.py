"""Credential bindings: a backend and key per Claude Code config directory, as the Go confab CLI keeps them.

`~/.confab/config.json` (or `$CONFAB_CONFIG_PATH`) may hold, beside the
top-level `backend_url`/`api_key` (the default binding)::

    "bindings": {"claude-code": {"/home/u/.claude-work": {"backend_url": "…", "api_key": "…"}}}

The Go client's rules (pkg/config/binding.go, pkg/provider/claude.go,
cmd/hook_sessionstart.go `configDirForHook`, pkg/pathcanon):

- a session's config dir is derived from its transcript path, which Claude Code
  writes as `<config dir>/projects/<project>/<id>.jsonl` (absolute, and the
  directory two levels up named `projects`); otherwise it is the default;
- the default dir is `$CONFAB_CLAUDE_DIR`, else `~/.claude` (the Go client does
  not read `CLAUDE_CONFIG_DIR`: Claude Code's own choice of dir shows in the
  transcript path);
- dirs are compared canonically: `~` expanded, absolute, cleaned, symlinks
  resolved when the path exists;
- no bindings for claude-code: every session takes the default binding;
- a session from a bound-looking dir with no binding of its own is refused
  (`NoBinding`), never sent to the default backend.

The hook resolves the dir (it knows the user's environment) and the
registration carries it; the worker chooses its backend from it.
"""

from __future__ import annotations

import os

from .errors import ConfigError

PROVIDER = "claude-code"


def canonical_dir(path: str, home: str = "") -> str:
    """pathcanon.CanonicalDir: "" stays ""."""
    if not path:
        return ""
    if path == "~" or path.startswith("~/"):
        path = (home or os.path.expanduser("~")) + path[1:]
    lexical = os.path.normpath(os.path.abspath(path))
    return os.path.realpath(lexical) if os.path.exists(lexical) else lexical


def default_claude_dir(home: str, env=None) -> str:
    env = os.environ if env is None else env
    return env.get("CONFAB_CLAUDE_DIR") or os.path.join(home, ".claude")


def config_dir_from_transcript(transcript_path: str, home: str = "") -> str:
    """ClaudeCode.ConfigDirFromTranscript; "" when the path does not have Claude Code's layout."""
    if not os.path.isabs(transcript_path):
        return ""
    projects = os.path.dirname(os.path.dirname(os.path.normpath(transcript_path)))
    if os.path.basename(projects) != "projects":
        return ""
    return canonical_dir(os.path.dirname(projects), home)


def session_config_dir(transcript_path: str, home: str, env=None) -> str:
    """The binding key of a session: its config dir, or "" for the default binding."""
    found = config_dir_from_transcript(transcript_path, home)
    if not found or found == canonical_dir(default_claude_dir(home, env), home):
        return ""
    return found


class NoBinding(ConfigError):
    """A session from a config dir with no binding of its own: it must not go to the default backend."""


def backend_for(backend, config_dir: str):
    """The BackendConfig for a session of `config_dir` (GetUploadConfigFor): the default one, or its
    binding's URL and key with the global settings (redaction) kept. NoBinding: refused."""
    import msgspec

    bound = backend.bindings.get(PROVIDER) or {}
    if not config_dir or not bound:  # no bindings at all: the Go client's short-circuit to the default
        return backend
    creds = bound.get(config_dir)
    if creds is None:
        raise NoBinding(f"no confab binding for {PROVIDER} at {config_dir}: this session is not sent to the "
                        "default backend (add one with `confab setup --config-dir`, or a \"bindings\" entry "
                        "in the confab config)")
    return msgspec.structs.replace(backend, backend_url=creds.backend_url, api_key=creds.api_key.strip(),
                                   bindings={})
