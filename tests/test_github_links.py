"""Commit and PR links (issue 14, item 7), through `confabctl hook pre-tool-use` / `post-tool-use`, a real
master and the test backend. The expected texts are the Go client's (cmd/hook_pretooluse.go), copied here."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import PYTHON, backend_has_file, fixture_lines

MARKER_RE = re.compile(r"# confab-linked-[0-9a-f]{4}")


def go_commit_reason(url, marker):
    return ("✓ Confab is linking this commit to your session. Add this trailer to the end of your commit message "
            "(after any other trailers like Co-Authored-By):\n\n    Confab-Link: " + url + "\n\n"
            "Alternatively, if the Confab link is already in the commit message (e.g. via `git commit -F <file>`), "
            "certify it by appending this exact shell comment to your git command:\n\n    " + marker + "\n\n"
            "The marker is a shell comment on the git command line ONLY — never put it in the commit message.\n\n"
            "IMPORTANT: Copy the trailer verbatim. The value is a URL, NOT a ticket ID like CF-123.")


def go_bash_pr_reason(url, marker):
    return ("✓ Confab is linking this PR to your session. Add this line at the bottom of the PR body:\n\n"
            "    📝 [Confab link](" + url + ")\n\n"
            "Alternatively, if the Confab link is already in the PR body (e.g. via --body-file or $(cat …)), "
            "certify it by appending this exact shell comment to your gh command:\n\n    " + marker + "\n\n"
            "The marker is a shell comment on the command line ONLY — never put it in the PR title or body.\n\n"
            "IMPORTANT: Copy the link line verbatim. The value is a URL, NOT a ticket ID like CF-123.")


def go_mcp_pr_reason(url):
    return ("✓ Confab is linking this PR to your session. Add this line at the bottom of the PR body:\n\n"
            "    📝 [Confab link](" + url + ")\n\n"
            "IMPORTANT: Copy this line verbatim. The value is a URL, NOT a ticket ID like CF-123.")


@pytest.fixture
def synced(cfd):
    """A session the master has synced: its State holds the backend's session id."""
    eid = "linked-session"
    cfd.transcript(eid).write_bytes(b"".join(fixture_lines()))
    cfd.master()
    assert cfd.ctl("register", "--session-id", eid, "--transcript", str(cfd.transcript(eid))).returncode == 0
    cfd.backend.wait_for(lambda: backend_has_file(cfd.backend, eid, cfd.transcript(eid)))
    url = f"{cfd.backend.url}/sessions/{cfd.backend.session_id(eid)}"
    return eid, url


def tool_input(cfd, eid, tool, cwd="/home/dev/proj", response=None, **fields):
    body = {"session_id": eid, "transcript_path": str(cfd.transcript(eid)), "cwd": cwd,
            "hook_event_name": "PreToolUse" if response is None else "PostToolUse",
            "tool_name": tool, "tool_input": fields}
    if response is not None:
        body["tool_response"] = response
    return body


def pre(cfd, payload, env=None):
    r = cfd.hook("pre-tool-use", payload, env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return json.loads(r.stdout) if r.stdout.strip() else None


def decision(answer):
    out = answer["hookSpecificOutput"]
    assert set(out) == {"hookEventName", "permissionDecision", "permissionDecisionReason"}
    assert out["hookEventName"] == "PreToolUse"
    return out["permissionDecision"], out["permissionDecisionReason"]


def test_a_commit_is_asked_for_the_trailer_as_the_go_client_asks(cfd, synced):
    eid, url = synced
    kind, reason = decision(pre(cfd, tool_input(cfd, eid, "Bash", command="git add . && git commit -m 'fix'")))
    marker = MARKER_RE.search(reason).group(0)
    assert kind == "deny" and reason == go_commit_reason(url, marker)
    # with the trailer, or the certification comment: allowed
    assert decision(pre(cfd, tool_input(cfd, eid, "Bash", command=f"git commit -m 'fix\n\nConfab-Link: {url}'"))) \
        == ("allow", "Confab link present")
    assert decision(pre(cfd, tool_input(cfd, eid, "Bash", command=f"git commit -F msg.txt {marker}")))[0] == "allow"
    # the earlier one wins: a commit whose message mentions gh pr create is a commit
    assert "commit" in decision(pre(cfd, tool_input(cfd, eid, "Bash", command="git commit -m 'gh pr create'")))[1]


def test_a_pr_is_asked_for_the_link_bash_and_mcp(cfd, synced):
    eid, url = synced
    kind, reason = decision(pre(cfd, tool_input(cfd, eid, "Bash", command="gh pr create --title T --body B")))
    assert kind == "deny" and reason == go_bash_pr_reason(url, MARKER_RE.search(reason).group(0))
    mcp = "mcp__github__create_pull_request"
    assert decision(pre(cfd, tool_input(cfd, eid, mcp, title="T", body="no link"))) == ("deny", go_mcp_pr_reason(url))
    assert decision(pre(cfd, tool_input(cfd, eid, mcp, title="T", body=f"x\n📝 [Confab link]({url})"))) \
        == ("allow", "Session URL already present")


def test_anything_else_or_nothing_to_link_prints_nothing(cfd, synced):
    eid, _url = synced
    for command in ("ls -la", "git status", "git log"):
        assert pre(cfd, tool_input(cfd, eid, "Bash", command=command)) is None
    assert pre(cfd, tool_input(cfd, eid, "Read", file_path="/x")) is None
    disabled = dict(cfd.env, CONFAB_DISABLE_LINK_FROM_GITHUB="1")
    assert pre(cfd, tool_input(cfd, eid, "Bash", command="git commit -m x"), env=disabled) is None
    assert pre(cfd, tool_input(cfd, "no-state-here", "Bash", command="git commit -m x")) is None  # not synced
    for bad in ("not json", "[]", json.dumps({"session_id": "../x", "tool_name": "Bash"}), ""):
        r = cfd.hook("pre-tool-use", bad)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_post_tool_use_links_the_commit_and_the_pr(cfd, synced, tmp_path):
    eid, _url = synced
    backend = cfd.backend
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "remote", "add", "origin", "git@github.com:acme/widget.git")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "one")
    sha = git(repo, "rev-parse", "HEAD")
    ok = {"stdout": "[main abc] one", "stderr": "", "interrupted": False}
    commit = tool_input(cfd, eid, "Bash", cwd=str(repo), response=ok, command="git commit -m one")
    for _ in range(2):  # the second: the server's 409, quietly
        r = cfd.hook("post-tool-use", commit)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    links = backend.github_links(eid)
    assert [(x["url"], x["link_type"], x["source"]) for x in links] == \
        [(f"https://github.com/acme/widget/commit/{sha}", "commit", "cli_hook")]

    failed = dict(commit, tool_response={"stdout": "", "stderr": "nothing to commit", "exit_code": 1})
    assert cfd.hook("post-tool-use", failed).returncode == 0
    pr = tool_input(cfd, eid, "Bash", cwd=str(repo), command="gh pr create --fill",
                    response={"stdout": "https://github.com/acme/widget/pull/7\n", "stderr": ""})
    assert cfd.hook("post-tool-use", pr).returncode == 0
    assert [x["url"] for x in backend.github_links(eid)][1:] == ["https://github.com/acme/widget/pull/7"]

    git(repo, "remote", "set-url", "origin", "https://gitlab.example/acme/widget.git")  # not GitHub: no link
    git(repo, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "two")
    assert cfd.hook("post-tool-use", commit).returncode == 0
    assert len(backend.github_links(eid)) == 2


@pytest.mark.parametrize("event", ["pre-tool-use", "post-tool-use"])
def test_the_tool_hooks_stay_light(cfd, tmp_path, event):
    """Before and after every Bash call: no msgspec, requests, psutil, subprocess, argparse, nor
    even re imported (post-tool-use compiled its patterns for every command, ~5 ms, before)."""
    payload = tmp_path / "in.json"
    response = {"stdout": "a\n", "stderr": ""} if event == "post-tool-use" else None
    payload.write_text(json.dumps(tool_input(cfd, "light", "Bash", response=response, command="ls")))
    with open(payload) as stdin:
        r = subprocess.run([PYTHON, "-X", "importtime", "-c",
                            f"import sys; from confabd.ctl import hook; sys.exit(hook([{event!r}]))"],
                           stdin=stdin, env=cfd.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == ""
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    for heavy in ("msgspec", "psutil", "requests", "backoff", "argparse", "socket", "subprocess", "re"):
        assert heavy not in imported, heavy


def test_a_bound_sessions_links_go_to_its_own_backend(cfd, tmp_path):
    """The links follow the session's credential binding (bindings.py), never the default backend."""
    from tests.fakebackend import FakeBackend

    with FakeBackend(api_keys=("cfb_bound_links_key",)) as bound:
        work = cfd.home / ".claude-work"
        transcript = work / "projects" / "-home-dev-proj" / "bound-links.jsonl"
        transcript.parent.mkdir(parents=True)
        transcript.write_bytes(b"".join(fixture_lines()))
        config = cfd.home / ".confab" / "config.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps({"bindings": {"claude-code": {
            str(work): {"backend_url": bound.url, "api_key": bound.api_key}}}}))
        cfd.master()
        eid = "bound-links"
        assert cfd.ctl("register", "--session-id", eid, "--transcript", str(transcript)).returncode == 0
        bound.wait_for(lambda: bound.file_bytes(eid, transcript.name) == transcript.read_bytes())
        payload = {"session_id": eid, "transcript_path": str(transcript), "cwd": "/home/dev/proj",
                   "hook_event_name": "PostToolUse", "tool_name": "Bash",
                   "tool_input": {"command": "gh pr create --fill"},
                   "tool_response": {"stdout": "https://github.com/acme/widget/pull/9\n", "stderr": ""}}
        assert cfd.hook("post-tool-use", payload).returncode == 0
        assert [x["url"] for x in bound.github_links(eid)] == ["https://github.com/acme/widget/pull/9"]
        answer = pre(cfd, dict(payload, hook_event_name="PreToolUse", tool_response=None))
        assert f"{bound.url}/sessions/{bound.session_id(eid)}" in decision(answer)[1]
        assert cfd.backend.session_id(eid) is None
