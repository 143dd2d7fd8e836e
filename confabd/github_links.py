"""Commit and PR links, as the Go confab CLI makes them (its cmd/hook_pretooluse.go, cmd/hook_posttooluse.go).

`confabctl hook pre-tool-use` runs before every Bash (and GitHub MCP
create-PR) tool call. For a `git commit` it asks Claude, by denying the call
with a reason, to add the trailer `Confab-Link: <backend>/sessions/<id>`; for
`gh pr create` (or the MCP tool) a line `📝 [Confab link](<url>)` at the end of
the PR body. A command that already holds the URL, or the certification
comment `# confab-linked-<4 hex>` (for a message in a file the hook cannot
see), is allowed. `confabctl hook post-tool-use` posts the PR URL from the
tool's output, or the GitHub URL of HEAD after a successful commit or push, to
`POST /api/v1/sessions/<id>/github-links` (`{"url": …, "source": "cli_hook"}`).
`CONFAB_DISABLE_LINK_FROM_GITHUB` (any value) turns both off.

Cheap on the path taken before every tool call: only the standard library's
json and re, no master round trip (the session's backend id is in its State
file), nothing read at all unless the command is a commit or a PR. Silent and
exit 0 on anything unexpected: a link is never worth breaking Claude Code.
"""

from __future__ import annotations

import os

DISABLE_ENV = "CONFAB_DISABLE_LINK_FROM_GITHUB"
BASH = "Bash"
MCP_CREATE_PR = "mcp__github__create_pull_request"
MATCHERS = (BASH, MCP_CREATE_PR)  # the tool names the hooks are installed for (pkg/hookconfig/claude.go)

COMMIT_TRAILER_PREFIX = "Confab-Link: "
MARKER_PREFIX = "# confab-linked"
LINK_SOURCE = "cli_hook"
# The Go client's patterns, compiled only for a command that could match (`re` and compiling them
# would be most of this hook's own cost before every tool call).
PATTERNS = {
    "commit": r"\bgit\b\s+(-\S+(\s+\S+)?\s+)*commit\b",
    "push": r"\bgit\b\s+(-\S+(\s+\S+)?\s+)*push\b",
    "pr_create": r"\bgh\b\s+(-\S+(\s+\S+)?\s+)*pr\s+create\b",
    "marker": r"# confab-linked-[0-9a-f]{4}(?:[^0-9a-f]|$)",
    "pr_url": r"https://github\.com/[^/\s]+/[^/\s]+/pull/\d+",
}
_compiled: dict = {}


def _re(name: str):
    if name not in _compiled:
        import re

        _compiled[name] = re.compile(PATTERNS[name])
    return _compiled[name]


def _dumps(value) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


# -- what the hooks answer -----------------------------------------------------


def session_url(backend_url: str, confab_session_id: str) -> str:
    return backend_url.rstrip("/") + "/sessions/" + confab_session_id


def pr_link(url: str) -> str:
    return "📝 [Confab link](" + url + ")"


def new_marker() -> str:
    import random  # only when a link is asked for: not on the path of every tool call

    return f"{MARKER_PREFIX}-{random.randrange(0x10000):04x}"


def commit_deny_reason(url: str, marker: str) -> str:
    return ("✓ Confab is linking this commit to your session. "
            "Add this trailer to the end of your commit message (after any other trailers like Co-Authored-By):"
            f"\n\n    {COMMIT_TRAILER_PREFIX}{url}\n\n"
            "Alternatively, if the Confab link is already in the commit message "
            "(e.g. via `git commit -F <file>`), certify it by appending "
            f"this exact shell comment to your git command:\n\n    {marker}\n\n"
            "The marker is a shell comment on the git command line ONLY — never put it in the commit message.\n\n"
            "IMPORTANT: Copy the trailer verbatim. The value is a URL, NOT a ticket ID like CF-123.")


def bash_pr_deny_reason(url: str, marker: str) -> str:
    return ("✓ Confab is linking this PR to your session. "
            f"Add this line at the bottom of the PR body:\n\n    {pr_link(url)}\n\n"
            "Alternatively, if the Confab link is already in the PR body "
            "(e.g. via --body-file or $(cat …)), certify it by appending "
            f"this exact shell comment to your gh command:\n\n    {marker}\n\n"
            "The marker is a shell comment on the command line ONLY — never put it in the PR title or body.\n\n"
            "IMPORTANT: Copy the link line verbatim. The value is a URL, NOT a ticket ID like CF-123.")


def mcp_pr_deny_reason(url: str) -> str:
    return ("✓ Confab is linking this PR to your session. "
            f"Add this line at the bottom of the PR body:\n\n    {pr_link(url)}\n\n"
            "IMPORTANT: Copy this line verbatim. The value is a URL, NOT a ticket ID like CF-123.")


def decision(allow: bool, reason: str) -> str:
    """The JSON Claude Code reads from a PreToolUse hook (the Go client's PreToolUseResponse)."""
    return _dumps({"hookSpecificOutput": {"hookEventName": "PreToolUse",
                                          "permissionDecision": "allow" if allow else "deny",
                                          "permissionDecisionReason": reason}})


def _first(name: str, text: str) -> int:
    match = _re(name).search(text)
    return match.start() if match else -1


def pre_tool_use(hook_input: dict, find_session) -> str:
    """What to print for one PreToolUse input ("" for nothing). `find_session(hook_input)` gives
    (confab session id, backend URL) or None; it is called only for a commit or a PR."""
    tool = hook_input.get("tool_name")
    tool_input = hook_input.get("tool_input")
    if not isinstance(tool_input, dict):
        return ""
    if tool == MCP_CREATE_PR:
        found = find_session(hook_input)
        if not found:
            return ""
        url = session_url(found[1], found[0])
        body = tool_input.get("body")
        if isinstance(body, str) and url in body:
            return decision(True, "Session URL already present")
        return decision(False, mcp_pr_deny_reason(url))
    command = tool_input.get("command")
    if tool != BASH or not isinstance(command, str) or not command:
        return ""
    if "commit" not in command and "create" not in command:
        return ""  # the common case, settled without a regex
    commit_at, pr_at = _first("commit", command), _first("pr_create", command)
    if commit_at < 0 and pr_at < 0:
        return ""  # the common case: nothing read, nothing said
    found = find_session(hook_input)
    if not found:
        return ""
    url = session_url(found[1], found[0])
    if _re("marker").search(command) or url in command:
        return decision(True, "Confab link present")
    if commit_at >= 0 and (pr_at < 0 or commit_at < pr_at):  # the earlier one wins, as in the Go client
        return decision(False, commit_deny_reason(url, new_marker()))
    return decision(False, bash_pr_deny_reason(url, new_marker()))


# -- PostToolUse: which URL to link ----------------------------------------------


def successful_bash(response) -> bool:
    """isSuccessfulBashResponse: no non-zero exit_code, and not stderr alone."""
    if not isinstance(response, dict):
        return False
    code = response.get("exit_code")
    if isinstance(code, (int, float)) and not isinstance(code, bool) and code != 0:
        return False
    stderr = response.get("stderr")
    if isinstance(stderr, str) and stderr and "stdout" not in response:
        return False
    return True


def pr_url_in(response) -> str:
    if not isinstance(response, dict):
        return ""
    match = _re("pr_url").search(_dumps(response))
    return match.group(0) if match else ""


def github_repo_url(remote: str) -> str:
    """ToGitHubURL: the https://github.com/owner/repo of a remote URL, "" when it is not GitHub's."""
    remote = remote.strip()
    if remote.endswith(".git"):
        remote = remote[:-4]
    for prefix in ("git@github.com:", "ssh://git@github.com/", "https://github.com/"):
        if remote.startswith(prefix):
            return "https://github.com/" + remote[len(prefix):]
    return ""


def url_to_link(hook_input: dict, git) -> str:
    """The GitHub URL a PostToolUse input should link ("" for none). `git(cwd, *args)` runs git."""
    tool = hook_input.get("tool_name")
    response = hook_input.get("tool_response")
    if tool == MCP_CREATE_PR:
        return pr_url_in(response)
    tool_input = hook_input.get("tool_input")
    command = tool_input.get("command") if isinstance(tool_input, dict) else None
    if tool != BASH or not isinstance(command, str) or not command:
        return ""
    if "commit" not in command and "push" not in command and "create" not in command:
        return ""  # the common case, settled without importing re (each pattern needs its word)
    if _first("pr_create", command) >= 0:
        return pr_url_in(response)
    if not (_first("commit", command) >= 0 or _first("push", command) >= 0) or not successful_bash(response):
        return ""
    cwd = hook_input.get("cwd")
    if not isinstance(cwd, str) or not cwd:
        return ""
    sha = git(cwd, "rev-parse", "HEAD")
    repo = github_repo_url(git(cwd, "config", "--get", "remote.origin.url")) if sha else ""
    return f"{repo}/commit/{sha}" if sha and repo else ""


# -- the hooks' I/O ---------------------------------------------------------------


def run_git(cwd: str, *args: str) -> str:
    import subprocess

    try:
        done = subprocess.run(["git", "-C", cwd, *args], capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def disabled(env=None) -> bool:
    return bool((os.environ if env is None else env).get(DISABLE_ENV))


# -- where the session's links go ---------------------------------------------------

_CONFAB_ID_RE = r"[A-Za-z0-9-]{1,128}\Z"  # it goes into a URL path: the server's ids are UUIDs


def link_target(hook_input: dict, sync_dir: str, home: str, env=None):
    """(confab session id, backend URL, API key) of the hook's session, or None: not synced to a
    backend yet (no State, or no id in it), archived locally, or from an unbound config dir."""
    import json
    import re

    from . import bindings, paths
    from .fileio import read_private_file

    env = os.environ if env is None else env
    session_id = hook_input.get("session_id")
    if not isinstance(session_id, str) or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}", session_id):
        return None
    try:
        state = json.loads(read_private_file(paths.state_path(sync_dir, session_id)))
        try:
            config = json.loads(read_private_file(paths.confab_config_path(home, env)) or b"{}")
        except FileNotFoundError:  # the environment may name the backend alone
            config = {}
    except (OSError, ValueError):
        return None
    confab_id = state.get("confab_session_id") if isinstance(state, dict) else None
    if not isinstance(confab_id, str) or not re.match(_CONFAB_ID_RE, confab_id) or not isinstance(config, dict):
        return None
    url, key = _backend(config, bindings.session_config_dir(str(hook_input.get("transcript_path") or ""), home,
                                                             env), env)
    return (confab_id, url, key) if url and key else None


def _backend(config: dict, config_dir: str, env) -> tuple:
    bound = config.get("bindings", {}).get("claude-code") if isinstance(config.get("bindings"), dict) else None
    if config_dir and isinstance(bound, dict) and bound:  # as bindings.backend_for: never the default instead
        creds = bound.get(config_dir)
        creds = creds if isinstance(creds, dict) else {}
        return str(creds.get("backend_url") or ""), str(creds.get("api_key") or "").strip()
    url = env.get("CONFAB_BACKEND_URL") or config.get("backend_url") or ""
    key = env.get("CONFAB_API_KEY") or config.get("api_key") or ""
    return str(url), str(key).strip()


def post_link(target: tuple, url: str, timeout: float = 10.0) -> str:
    """POST the link; what happened, in words (the server's 409: already linked)."""
    from .config import check_backend_url
    from .sinks.base import SinkError
    from .sinks.http import HttpSink

    confab_id, backend_url, key = target
    try:
        with HttpSink(check_backend_url(backend_url), key, timeout=timeout) as sink:
            sink.link_github(confab_id, url, LINK_SOURCE)
    except SinkError as exc:
        if exc.status == 409:
            return "already linked"
        return f"not linked: {exc}"
    except Exception as exc:  # noqa: BLE001 - a config error, anything: never Claude Code's problem
        return f"not linked: {exc}"
    return "linked"
