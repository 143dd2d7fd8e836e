"""confabctl install-hooks / uninstall-hooks (confabd.hooks_install)."""

import io
import json
import os
import stat
from pathlib import Path

import pytest

from confabd import hooks_install as hi

import subprocess
import sys
import time

# what install-hooks writes for the default prefix `confabctl` (not an absolute path: `command -v`)
START = "command -v confabctl >/dev/null && exec confabctl hook session-start || true"
END = "command -v confabctl >/dev/null && exec confabctl hook session-end || true"
PROMPT = "command -v confabctl >/dev/null && exec confabctl hook user-prompt-submit || true"
PRE = "command -v confabctl >/dev/null && exec confabctl hook pre-tool-use || true"
POST = "command -v confabctl >/dev/null && exec confabctl hook post-tool-use || true"
GO_TOOL_MATCHERS = ("Bash", "mcp__github__create_pull_request")  # the Go client's (pkg/hookconfig/claude.go)
PLAIN_START = "/usr/bin/confabctl hook session-start"
GUARDED_START = "[ -x /usr/bin/confabctl ] && exec /usr/bin/confabctl hook session-start || true"
GUARDED_END = "[ -x /usr/bin/confabctl ] && exec /usr/bin/confabctl hook session-end || true"


def run_install(path, **kw):
    out = io.StringIO()
    rc = hi.install_hooks(str(path), out=out, **kw)
    return rc, out.getvalue()


def run_uninstall(path, **kw):
    out = io.StringIO()
    rc = hi.uninstall_hooks(str(path), out=out, **kw)
    return rc, out.getvalue()


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def commands(data, event):
    return [h["command"] for g in data["hooks"][event] for h in g["hooks"]]


def test_no_settings_file_creates_it_and_dir(tmp_path):
    path = tmp_path / ".claude" / "settings.json"
    rc, _ = run_install(path)
    assert rc == 0
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert load(path) == {
        "hooks": {
            "SessionStart": [{"matcher": "*", "hooks": [{"type": "command", "command": START}]}],
            "UserPromptSubmit": [{"hooks": [{"type": "command", "command": PROMPT}]}],  # no matcher there
            "SessionEnd": [{"matcher": "*", "hooks": [{"type": "command", "command": END}]}],
            # the commit and PR links, under the Go client's two tool matchers
            "PreToolUse": [{"matcher": m, "hooks": [{"type": "command", "command": PRE}]} for m in GO_TOOL_MATCHERS],
            "PostToolUse": [{"matcher": m, "hooks": [{"type": "command", "command": POST}]} for m in GO_TOOL_MATCHERS],
        }
    }
    # written the way the user's file is formatted: indent=2, final newline
    assert path.read_text().startswith('{\n  "hooks": {\n    "SessionStart": [')
    assert path.read_text().endswith("}\n")
    assert not [p for p in path.parent.iterdir() if p.name != "settings.json"]  # no temp left


def test_default_path_uses_home(tmp_path, monkeypatch):
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hi.install_hooks(None, out=io.StringIO()) == 0
    assert commands(load(tmp_path / ".claude" / "settings.json"), "SessionEnd") == [END]


def test_empty_object(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text("{}\n")
    os.chmod(path, 0o640)
    assert run_install(path)[0] == 0
    data = load(path)
    assert commands(data, "SessionStart") == [START]
    assert commands(data, "SessionEnd") == [END]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # mode kept


def test_zero_length_file_counts_as_empty(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text("")
    assert run_install(path)[0] == 0
    assert commands(load(path), "SessionStart") == [START]


def test_other_settings_and_hooks_kept_in_order(tmp_path):
    path = tmp_path / "settings.json"
    original = {
        "model": "opus",
        "permissions": {"allow": ["Bash(ls:*)"]},
        "hooks": {
            "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "audit.sh"}]}],
            "SessionStart": [
                {"matcher": "startup", "hooks": [{"type": "command", "command": "echo hi"}]},
                {"matcher": "*", "hooks": [{"type": "command", "command": "notify-send start", "timeout": 5}]},
            ],
        },
        "env": {"FOO": "1"},
    }
    path.write_text(json.dumps(original, indent=2))
    assert run_install(path)[0] == 0
    data = load(path)
    assert list(data) == ["model", "permissions", "hooks", "env"]
    assert list(data["hooks"]) == ["PreToolUse", "SessionStart", "UserPromptSubmit", "SessionEnd", "PostToolUse"]
    # ours joins the user's Bash group, after their hook; a group for the MCP tool is added
    assert data["hooks"]["PreToolUse"] == [
        {"matcher": "Bash", "hooks": [{"type": "command", "command": "audit.sh"}, {"type": "command", "command": PRE}]},
        {"matcher": "mcp__github__create_pull_request", "hooks": [{"type": "command", "command": PRE}]}]
    ss = data["hooks"]["SessionStart"]
    assert ss[0] == original["hooks"]["SessionStart"][0]
    # ours went into the existing "*" group, after the user's hook
    assert ss[1] == {
        "matcher": "*",
        "hooks": [
            {"type": "command", "command": "notify-send start", "timeout": 5},
            {"type": "command", "command": START},
        ],
    }
    assert len(ss) == 2
    assert data["hooks"]["SessionEnd"] == [{"matcher": "*", "hooks": [{"type": "command", "command": END}]}]
    assert data["model"] == "opus" and data["env"] == {"FOO": "1"}


def test_old_confab_hook_replaced_in_place(tmp_path):
    path = tmp_path / "settings.json"
    original = {
        "hooks": {
            "SessionStart": [
                {
                    "matcher": "*",
                    "hooks": [
                        {"type": "command", "command": "before.sh"},
                        {"type": "command", "command": "/home/u/.local/bin/confab hook session-start", "timeout": 10},
                        {"type": "command", "command": "after.sh"},
                    ],
                }
            ],
            "SessionEnd": [
                {"matcher": "*", "hooks": [{"type": "command", "command": "/usr/bin/confabctl hook session-end"}]},
                # a duplicate of ours elsewhere is dropped (its group emptied -> removed)
                {"matcher": "other", "hooks": [{"type": "command", "command": "confab hook session-end"}]},
                {"matcher": "keep", "hooks": [{"type": "command", "command": "confab-like hook session-end"}]},
            ],
        }
    }
    path.write_text(json.dumps(original))
    assert run_install(path)[0] == 0
    data = load(path)
    assert data["hooks"]["SessionStart"] == [
        {
            "matcher": "*",
            "hooks": [
                {"type": "command", "command": "before.sh"},
                {"type": "command", "command": START, "timeout": 10},
                {"type": "command", "command": "after.sh"},
            ],
        }
    ]
    assert data["hooks"]["SessionEnd"] == [
        {"matcher": "*", "hooks": [{"type": "command", "command": END}]},
        {"matcher": "keep", "hooks": [{"type": "command", "command": "confab-like hook session-end"}]},
    ]


def test_command_prefix(tmp_path):
    path = tmp_path / "settings.json"
    assert run_install(path, command_prefix="/usr/bin/confabctl")[0] == 0
    assert commands(load(path), "SessionStart") == [GUARDED_START]
    # a second install with another prefix replaces ours instead of adding
    assert run_install(path)[0] == 0
    assert commands(load(path), "SessionStart") == [START]


@pytest.mark.parametrize(
    "text",
    ['{"hooks": {', "not json", '{"a": 1,}', "[1, 2]", '{"hooks": []}', '{"hooks": {"SessionStart": {}}}'],
)
def test_invalid_json_refused_and_untouched(tmp_path, capsys, text):
    path = tmp_path / "settings.json"
    path.write_text(text)
    before = os.stat(path)
    out = io.StringIO()
    assert hi.install_hooks(str(path), out=out) == 1
    err = capsys.readouterr().err
    assert str(path) in err or "hooks" in err
    assert err.strip()
    assert path.read_text() == text
    assert os.stat(path).st_ino == before.st_ino
    assert hi.uninstall_hooks(str(path), out=out) == 1
    assert path.read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]


def test_idempotent_second_run_does_not_rewrite(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"theme": "dark"}')
    assert run_install(path)[0] == 0
    first = path.read_text()
    ino = os.stat(path).st_ino
    rc, msg = run_install(path)
    assert rc == 0 and "nothing to do" in msg
    assert path.read_text() == first
    assert os.stat(path).st_ino == ino  # not even rewritten


def test_uninstall_removes_only_ours(tmp_path):
    path = tmp_path / "settings.json"
    original = {
        "theme": "dark",
        "hooks": {
            "SessionStart": [
                {"matcher": "*", "hooks": [{"type": "command", "command": "notify-send start"}]},
            ],
            "Stop": [{"matcher": "", "hooks": [{"type": "command", "command": "stop.sh"}]}],
        },
    }
    path.write_text(json.dumps(original, indent=2) + "\n")
    assert run_install(path)[0] == 0
    assert run_uninstall(path)[0] == 0
    assert load(path) == original
    # uninstall again: nothing to do, no error
    rc, msg = run_uninstall(path)
    assert rc == 0 and "nothing to do" in msg


def test_install_then_uninstall_on_empty_gives_empty(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text("{}")
    assert run_install(path)[0] == 0
    assert run_uninstall(path)[0] == 0
    assert load(path) == {}


def test_uninstall_missing_file_creates_nothing(tmp_path):
    path = tmp_path / "nope" / "settings.json"
    assert run_uninstall(path)[0] == 0
    assert not path.parent.exists()


def test_dry_run_writes_nothing(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"theme": "dark"}\n')
    rc, out = run_install(path, dry_run=True)
    assert rc == 0
    assert path.read_text() == '{"theme": "dark"}\n'
    assert out.startswith(f"--- {path}\n+++ {path}\n")
    assert f'+            "command": "{START}"' in out
    assert "not written" in out
    # dry run on a missing file creates nothing either
    missing = tmp_path / "sub" / "settings.json"
    rc, out = run_install(missing, dry_run=True)
    assert rc == 0 and "--- /dev/null" in out
    assert not missing.parent.exists()
    # and uninstall --dry-run
    assert run_install(path)[0] == 0
    installed = path.read_text()
    rc, out = run_uninstall(path, dry_run=True)
    assert rc == 0 and f"-" in out and START in out
    assert path.read_text() == installed


def test_symlinked_settings_edits_target(tmp_path):
    target = tmp_path / "dotfiles" / "settings.json"
    target.parent.mkdir()
    target.write_text("{}")
    link = tmp_path / "settings.json"
    link.symlink_to(target)
    assert run_install(link)[0] == 0
    assert link.is_symlink()
    assert commands(load(target), "SessionEnd") == [END]


@pytest.mark.parametrize(
    "cmd,ours",
    [
        ("confabctl hook session-start", True),
        ("/usr/bin/confabctl hook session-end", True),
        ("~/.local/bin/confab hook session-start", True),
        ("confab hook session-end --verbose", True),
        ("confab sync", False),
        ("confabctl status", False),
        ("echo confabctl hook session-start", False),
        ("notconfab hook session-start", False),
        ("confabctl hook 'unbalanced", False),
        (None, False),
        # the guarded form install-hooks writes, and the module form
        (GUARDED_START, True),
        (START, True),
        ("[ -x '/home/a b/.local/bin/confabctl' ] && exec '/home/a b/.local/bin/confabctl' hook session-end || true",
         True),
        ("/usr/bin/python3 -I -m confabd.ctl hook session-end", True),
        ("[ -x /usr/bin/python3 ] && exec /usr/bin/python3 -m confabd.ctl hook session-start || true", True),
        # not ours: a guard on another program, other commands chained to ours, no `|| true`
        ("[ -x /usr/bin/other ] && exec /usr/bin/confabctl hook session-start || true", False),
        ("[ -x /usr/bin/confabctl ] && exec /usr/bin/confabctl hook session-start", False),
        ("[ -x /usr/bin/confabctl ] && exec /usr/bin/confabctl hook session-start || rm -rf ~", False),
        ("confabctl hook session-start; rm -rf ~", False),
        ("confabctl hook session-start && notify-send hi", False),
        ("confabctl hook session-start > /tmp/log", False),
        ("python3 -m other.ctl hook session-start", False),
    ],
)
def test_is_our_command(cmd, ours):
    assert hi.is_our_command(cmd) is ours


def test_plain_hooks_upgraded_to_guarded_in_place(tmp_path):
    """Hooks written by an older install-hooks (plain command) become the guarded form, extra keys kept."""
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"hooks": {
        "SessionStart": [{"matcher": "*", "hooks": [
            {"type": "command", "command": "mine.sh"},
            {"type": "command", "command": PLAIN_START, "timeout": 10}]}],
        "SessionEnd": [{"matcher": "*", "hooks": [
            {"type": "command", "command": "/usr/bin/confabctl hook session-end"}]}]}}))
    assert run_install(path, command_prefix="/usr/bin/confabctl")[0] == 0
    data = load(path)
    assert data["hooks"]["SessionStart"] == [{"matcher": "*", "hooks": [
        {"type": "command", "command": "mine.sh"},
        {"type": "command", "command": GUARDED_START, "timeout": 10}]}]
    assert commands(data, "SessionEnd") == [GUARDED_END]
    # the guarded form is recognised as ours: a second run changes nothing, uninstall takes it out
    rc, msg = run_install(path, command_prefix="/usr/bin/confabctl")
    assert rc == 0 and "nothing to do" in msg
    assert run_uninstall(path)[0] == 0
    assert load(path) == {"hooks": {"SessionStart": [{"matcher": "*", "hooks": [
        {"type": "command", "command": "mine.sh"}]}]}}


def test_uninstall_removes_plain_and_guarded(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"hooks": {
        "SessionStart": [{"matcher": "*", "hooks": [{"type": "command", "command": PLAIN_START}]}],
        "SessionEnd": [{"matcher": "*", "hooks": [{"type": "command", "command": GUARDED_END}]}]}}))
    assert run_uninstall(path)[0] == 0
    assert load(path) == {}


def test_prefix_with_a_space_is_quoted(tmp_path):
    """An unquoted program path with a space (as ctl passes its own path) is one word, guard included."""
    program = tmp_path / "my bin" / "confabctl"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\necho \"ran $*\"\n")
    program.chmod(0o755)
    path = tmp_path / "settings.json"
    assert run_install(path, command_prefix=str(program))[0] == 0
    [command] = commands(load(path), "SessionEnd")
    assert hi.is_our_command(command)
    r = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=10)
    assert (r.returncode, r.stdout, r.stderr) == (0, "ran hook session-end\n", "")
    # the module form, from an interpreter whose path has a space
    command = hi.hook_command(f"{program} -m confabd.ctl", "session-start")
    assert hi.is_our_command(command)
    r = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=10)
    assert (r.returncode, r.stdout, r.stderr) == (0, "ran -m confabd.ctl hook session-start\n", "")


def _run_hook_line(command, stdin="{}"):
    # PATH without confabctl, as on a machine where confabd was removed
    return subprocess.run(["/bin/sh", "-c", command], input=stdin, capture_output=True, text=True, timeout=10,
                          env={"PATH": str(Path(__file__).parent / "no-such-dir"), "HOME": "/nonexistent"})


def test_guarded_hook_runs_confabctl_in_the_shells_process(tmp_path):
    """With confabctl there: it runs, gets the hook input, exits with its status, in the shell's own process."""
    program = tmp_path / "confabctl"
    program.write_text("#!/bin/sh\necho \"pid $$ args $*\"; cat; exit 3\n")
    program.chmod(0o755)
    command = hi.hook_command(str(program), "session-start")
    r = subprocess.run(["/bin/sh", "-c", f"echo \"shell $$\"; {command}"], input="INPUT", capture_output=True,
                       text=True, timeout=10)
    shell_pid = r.stdout.split()[1]
    assert r.returncode == 3 and r.stderr == ""
    assert r.stdout == f"shell {shell_pid}\npid {shell_pid} args hook session-start\nINPUT"  # exec: same pid


@pytest.mark.parametrize("prefix", ["/nonexistent/bin/confabctl", "confabctl",
                                    "/nonexistent/venv/bin/python -m confabd.ctl"])
def test_guarded_hook_silent_when_confabctl_is_gone(tmp_path, prefix):
    """confabd removed: the hook line prints nothing and exits 0 (Claude Code then reports no hook error)."""
    for arg in ("session-start", "session-end"):
        command = hi.hook_command(prefix, arg)
        assert hi.is_our_command(command)
        r = _run_hook_line(command)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), command
    # ... where the plain form fails loudly (what Claude Code showed after `apt purge confabd`)
    plain = _run_hook_line(f"{prefix} hook session-end")
    assert plain.returncode == 127 and "not found" in plain.stderr


def test_guard_costs_little(tmp_path):
    """The guard adds a builtin test to a shell Claude Code starts anyway: well under a millisecond per run."""
    program = tmp_path / "confabctl"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)

    def best_of(command, runs=30):
        best = float("inf")
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, check=True)
            best = min(best, time.perf_counter() - start)
        return best

    plain = best_of(f"{program} hook session-start")
    guarded = best_of(hi.hook_command(str(program), "session-start"))
    assert guarded - plain < 0.002, (plain, guarded)


def test_the_go_clis_prompt_hook_is_replaced_by_ours(tmp_path):
    """Go's `confab hook user-prompt-submit` starts an uploader of its own when the State's pid is not
    alive: two uploaders on one session. install-hooks puts ours in its place; uninstall takes ours out."""
    path = tmp_path / "settings.json"
    go = {"hooks": {
        "SessionStart": [{"matcher": "*", "hooks": [{"type": "command",
                                                     "command": "/usr/local/bin/confab hook session-start --provider claude-code"}]}],
        "UserPromptSubmit": [{"hooks": [{"type": "command", "command": "/usr/local/bin/confab hook user-prompt-submit"}]}],
    }}
    path.write_text(json.dumps(go))
    assert run_install(path)[0] == 0
    data = load(path)
    assert commands(data, "UserPromptSubmit") == [PROMPT]
    assert commands(data, "SessionStart") == [START]
    assert run_uninstall(path)[0] == 0
    assert "UserPromptSubmit" not in load(path).get("hooks", {})


# The hooks exactly as the Go confab CLI writes them (its pkg/hookconfig/claude.go): the session hooks with
# `--provider claude-code` under matcher "*", the prompt hook without a matcher, the tool-use hooks under
# the matchers "Bash" and "mcp__github__create_pull_request".
GO = "/usr/local/bin/confab"


def go_settings():
    tool = lambda arg: [{"matcher": m, "hooks": [{"type": "command", "command": f"{GO} hook {arg}"}]}
                        for m in GO_TOOL_MATCHERS]
    return {"model": "opus", "hooks": {
        "SessionStart": [{"matcher": "*", "hooks": [
            {"type": "command", "command": f"{GO} hook session-start --provider claude-code"},
            {"type": "command", "command": "confab sync start"}]}],  # an older Go install's, left beside
        "SessionEnd": [{"matcher": "*", "hooks": [
            {"type": "command", "command": f"{GO} hook session-end --provider claude-code"}]}],
        "UserPromptSubmit": [{"hooks": [{"type": "command", "command": f"{GO} hook user-prompt-submit"}]}],
        "PreToolUse": tool("pre-tool-use"),
        "PostToolUse": tool("post-tool-use"),
    }}


def ctl_install(path, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONFAB", "CLAUDE"))}
    return subprocess.run([sys.executable, "-m", "confabd.ctl", "install-hooks", "--settings", str(path), *extra],
                          capture_output=True, text=True, env=env, timeout=60)


def go_commands(data, event):
    return [c for c in commands(data, event) if c.startswith(GO) or c.startswith("confab ")]


def test_install_hooks_names_each_go_hook_and_replaces_its_uploader_hooks(tmp_path):
    """Every Go hook is found and named; its session and prompt hooks (each would start or stop its own
    uploader) give way to ours, the older `confab sync start` included."""
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(go_settings()))
    r = ctl_install(path)
    assert r.returncode == 0, r.stderr
    data = load(path)
    for event in ("SessionStart", "SessionEnd", "UserPromptSubmit"):
        assert go_commands(data, event) == [], event
    assert len(commands(data, "SessionStart")) == 1 and "confabd.ctl hook session-start" in commands(data, "SessionStart")[0]
    assert f"SessionStart[*]: {GO} hook session-start --provider claude-code: replaced by confabd's" in r.stdout
    assert "SessionStart[*]: confab sync start: replaced by confabd's" in r.stdout
    assert f"UserPromptSubmit: {GO} hook user-prompt-submit: replaced by confabd's" in r.stdout
    assert data["model"] == "opus"
    assert "--keep-confab" not in r.stderr
    for event in ("PreToolUse", "PostToolUse"):  # ours make the links now, under the same matchers
        assert go_commands(data, event) == [], event
        assert [g["matcher"] for g in data["hooks"][event]] == list(GO_TOOL_MATCHERS)
        assert all("confabd.ctl hook " in c for c in commands(data, event))
    assert f"PreToolUse[Bash]: {GO} hook pre-tool-use: replaced by confabd's" in r.stdout
    assert ctl_install(path).stdout.count("confab CLI hook") == 0  # once replaced, nothing of Go's left to name


def test_keep_confab_leaves_the_go_prompt_and_tool_hooks_and_warns(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(go_settings()))
    r = ctl_install(path, "--keep-confab")
    assert r.returncode == 0, r.stderr
    data = load(path)
    assert go_commands(data, "SessionStart") == [] and go_commands(data, "SessionEnd") == []
    assert go_commands(data, "UserPromptSubmit") == [f"{GO} hook user-prompt-submit"]
    assert len(commands(data, "UserPromptSubmit")) == 2  # ours beside it
    assert go_commands(data, "PreToolUse") == [f"{GO} hook pre-tool-use"] * 2
    assert commands(data, "PreToolUse") == [f"{GO} hook pre-tool-use"] * 2  # one link, not two
    assert f"UserPromptSubmit: {GO} hook user-prompt-submit: kept" in r.stdout
    assert "uploaded twice" in r.stderr and "session hooks are replaced" in r.stderr
    again = ctl_install(path, "--keep-confab")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert load(path) == data
