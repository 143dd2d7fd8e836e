"""Session metadata sent to the backend: first user message, summary, git and host info."""

from __future__ import annotations

import getpass
import html
import os
import re
import socket
import subprocess
from typing import Optional

import msgspec

from .records import GitInfo, GitRemote, InitMetadata

FIRST_MESSAGE_MAX_BYTES = 4096
SUMMARY_MAX_BYTES = 2048  # the server counts bytes of UTF-8 (Go len()), not characters

_USER_LINE = re.compile(rb'"type"\s*:\s*"user"')
_SUMMARY_LINE = re.compile(rb'"type"\s*:\s*"summary"')
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


class SessionFacts:
    """What the transcript tells about the session, learnt line by line as they are read."""

    def __init__(self):
        self.first_user_message = ""
        self.summary = ""
        self.cwd = ""
        self.git_branch = ""

    def may_learn_from(self, joined: bytes) -> bool:
        """Whether `learn` could take anything from these lines (joined): a needle it looks for is there.
        Redaction keeps JSON keys and the type values, so the raw lines answer for the redacted ones."""
        return (b'"summary"' in joined or (not self.first_user_message and b'"user"' in joined)
                or (not self.cwd and b'"cwd"' in joined))

    def learn(self, lines: list[bytes], joined: Optional[bytes] = None) -> None:
        """Learn from a batch of lines (`joined`: the same lines joined by newlines).

        The first user message and the cwd are found once, early; after that a
        batch costs one fast substring search for `"summary"` over `joined`.
        """
        joined = b"\n".join(lines) if joined is None else joined
        if not self.first_user_message and b'"user"' in joined:
            for line in lines:
                if b'"user"' in line and _USER_LINE.search(line):
                    self._learn_user(line)
                    if self.first_user_message:
                        break
        if not self.cwd and b'"cwd"' in joined:
            for line in lines:
                if b'"cwd"' in line:
                    self._learn_location(line)
                    if self.cwd:
                        break
        for line in lines_containing(joined, b'"summary"'):
            if _SUMMARY_LINE.search(line):
                self._learn_summary(line)

    def _learn_user(self, line: bytes) -> None:
        obj = _decode(line)
        if obj.get("type") != "user":
            return
        text = _message_text(obj.get("message"))
        if text:
            self.first_user_message = clean_text(text, FIRST_MESSAGE_MAX_BYTES)
        if not self.cwd:
            self._take_location(obj)

    def _learn_summary(self, line: bytes) -> None:
        obj = _decode(line)
        summary = obj.get("summary")
        # A summary with a leafUuid describes an earlier session.
        if obj.get("type") == "summary" and isinstance(summary, str) and summary and not obj.get("leafUuid"):
            self.summary = cut_utf8(summary, SUMMARY_MAX_BYTES)

    def _learn_location(self, line: bytes) -> None:
        self._take_location(_decode(line))

    def _take_location(self, obj: dict) -> None:
        cwd = obj.get("cwd")
        if isinstance(cwd, str) and cwd:
            self.cwd = cwd
            branch = obj.get("gitBranch")
            if isinstance(branch, str):
                self.git_branch = branch


def lines_containing(joined: bytes, needle: bytes):
    """Each line of `joined` (newline-separated) that contains `needle`, once, in order.

    bytes.find is a two-way search at memory speed; `re` would stop at every
    byte that could start the pattern (every `"` of a JSON line).
    """
    pos = joined.find(needle)
    while pos >= 0:
        start = joined.rfind(b"\n", 0, pos) + 1
        end = joined.find(b"\n", pos)
        end = len(joined) if end < 0 else end
        yield joined[start:end]
        pos = joined.find(needle, end)


def _decode(line: bytes) -> dict:
    try:
        obj = msgspec.json.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):  # not JSON, or not UTF-8: no facts in it
        return {}
    return obj if isinstance(obj, dict) else {}


def _message_text(message) -> str:
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                text = block.get("text")
                if isinstance(text, str) and text.strip():
                    return text.strip()
    return ""


def cut_utf8(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` of UTF-8, on a character boundary."""
    data = text.encode("utf-8")
    return text if len(data) <= max_bytes else data[:max_bytes].decode("utf-8", "ignore")


def clean_text(text: str, max_bytes: int) -> str:
    """Tags removed, entities unescaped, whitespace collapsed, cut to max_bytes of UTF-8 with '...'."""
    text = _SPACE.sub(" ", html.unescape(_TAG.sub("", text))).strip()
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[: max_bytes - 3].decode("utf-8", "ignore") + "..."


# ---------------------------------------------------------------------------
# Git and host facts.


def git_info(cwd: str, branch: str = "") -> Optional[GitInfo]:
    """The repo at `cwd` as the newer confab client describes it (None when not a repo): origin's URL,
    branch, last commit (sha, subject, author), whether the work tree is dirty, the remotes and the
    branch's tracking remote. URLs never carry credentials."""
    if not cwd or not os.path.isdir(cwd):
        return GitInfo(branch=branch) if branch else None
    repo_url = _git(cwd, "config", "--get", "remote.origin.url")
    commit, _, rest = _git(cwd, "log", "-1", "--format=%H%n%s%n%an <%ae>").partition("\n")
    message, _, author = rest.partition("\n")
    branch = branch or _git(cwd, "rev-parse", "--abbrev-ref", "HEAD")
    if not (repo_url or commit or branch):
        return None
    status = _git_result(cwd, "status", "--porcelain")
    return GitInfo(
        repo_url=_strip_credentials(repo_url), branch=branch, commit_sha=commit, commit_message=message,
        author=author, is_dirty=None if status is None else bool(status.strip()),
        remotes=parse_remotes(_git(cwd, "remote", "-v")),
        tracking_remote=_git(cwd, "config", "--get", f"branch.{branch}.remote") if branch and branch != "HEAD" else "",
    )


def parse_remotes(text: str) -> tuple[GitRemote, ...]:
    """`git remote -v` ("origin\tURL (fetch)" / "(push)" lines) as remotes in their order."""
    found: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        name, tab, rest = line.partition("\t")
        for direction in ("fetch", "push"):
            suffix = f" ({direction})"
            if tab and name and rest.endswith(suffix):
                found.setdefault(name, {})[direction] = _strip_credentials(rest[: -len(suffix)].strip())
    return tuple(GitRemote(name, urls.get("fetch", ""), urls.get("push", "")) for name, urls in found.items())


DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# What git is given of our environment: enough to find itself and the user's
# ~/.gitconfig, nothing else. Not CONFAB_API_KEY, and in system mode nothing
# else of the daemon's (git runs hooks and helpers the repo's config names).
_GIT_ENV_KEEP = ("PATH", "HOME", "USER", "LOGNAME")


def git_environment(env=None) -> dict[str, str]:
    env = os.environ if env is None else env
    clean = {name: env[name] for name in _GIT_ENV_KEEP if env.get(name)}
    clean.setdefault("PATH", DEFAULT_PATH)
    clean.update(LC_ALL="C", GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0")
    return clean


def _git(cwd: str, *args: str) -> str:
    return (_git_result(cwd, *args) or "").strip()


def _git_result(cwd: str, *args: str) -> Optional[str]:
    """git's output, None when it failed or took too long."""
    try:
        result = subprocess.run(
            ["git", "-C", cwd, *args], capture_output=True, text=True, timeout=2,
            env=git_environment(), stdin=subprocess.DEVNULL, close_fds=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def _strip_credentials(url: str) -> str:
    """https://user:token@host/repo -> https://host/repo: never ship a token in metadata."""
    return re.sub(r"(://)[^/@\s]+@", r"\1", url)


def init_metadata(cwd: str, branch: str = "") -> InitMetadata:
    try:
        username = getpass.getuser()
    except (KeyError, OSError):
        username = ""
    return InitMetadata(cwd=cwd, git_info=git_info(cwd, branch), hostname=socket.gethostname(), username=username)
