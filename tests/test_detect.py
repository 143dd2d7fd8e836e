"""`confabctl install-hooks` / `uninstall-hooks` without `--provider`: every agent found, none other
(confabd.providers.detect), through the real confabctl."""

import json
import os
from pathlib import Path

PLUGIN = Path(".config") / "opencode" / "plugins" / "confabd-sync.ts"


def agent_env(cfd, tmp_path, programs=()):
    """cfd's env with a PATH of only stand-in programs, no agent variables from the outer environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in programs:
        program = bin_dir / name
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o755)
    env = {k: v for k, v in cfd.env.items() if k not in ("CODEX_HOME", "XDG_CONFIG_HOME")}
    env["PATH"] = str(bin_dir)
    return env


def snapshot(home: Path) -> dict:
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()}


def test_every_agent_found_gets_its_hooks_once_and_loses_only_ours(cfd, tmp_path):
    home = cfd.home
    settings = home / ".claude" / "settings.json"
    settings.write_text('{"theme": "dark"}\n')
    (home / ".codex").mkdir()
    codex_config = home / ".codex" / "config.toml"
    codex_config.write_text('model = "o3"  # mine\n')
    env = agent_env(cfd, tmp_path, programs=["opencode"])  # OpenCode by its program only; no Cursor

    r = cfd.ctl("install-hooks", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"Claude Code (found: {home / '.claude'}): installing" in lines
    assert f"Codex (found: {home / '.codex'}): installing" in lines
    assert any(line.startswith("OpenCode (found: opencode on PATH (") for line in lines), r.stdout
    assert f"Cursor: not found (no {home / '.cursor'}, no cursor-agent on PATH); skipped" in lines
    assert f"{settings}: hooks installed" in lines
    data = json.loads(settings.read_text())
    assert data["theme"] == "dark" and {"SessionStart", "UserPromptSubmit", "SessionEnd"} <= set(data["hooks"])
    text = codex_config.read_text()
    assert text.startswith('model = "o3"  # mine\n') and "# >>> confabd codex hooks >>>" in text
    assert (home / PLUGIN).is_file()
    assert not (home / ".cursor").exists()  # never for an agent the user does not have

    before = snapshot(home)
    again = cfd.ctl("install-hooks", env=env)
    assert again.returncode == 0, again.stderr
    assert snapshot(home) == before  # idempotent: nothing rewritten
    assert again.stdout.count("already") == 3, again.stdout

    r = cfd.ctl("uninstall-hooks", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(settings.read_text()) == {"theme": "dark"}
    assert "confabd codex hooks" not in codex_config.read_text()
    assert 'model = "o3"  # mine' in codex_config.read_text()
    assert not (home / PLUGIN).exists()
    assert not (home / ".cursor").exists()


def test_no_agent_found_means_claude_code_the_default_and_says_so(cfd, tmp_path):
    """confabd installed before any agent ran (install-user.sh on a fresh account): Claude Code's hooks,
    as install-hooks always did; nothing for the other agents."""
    home = tmp_path / "bare"
    home.mkdir()
    env = dict(agent_env(cfd, tmp_path), HOME=str(home))
    r = cfd.ctl("install-hooks", env=env)
    assert r.returncode == 0, r.stderr
    assert f"Claude Code: not found (no {home / '.claude'}, no claude on PATH)" in r.stdout
    assert "no coding agent found: installing Claude Code's hooks (the default agent)" in r.stdout
    assert [p.name for p in home.iterdir()] == [".claude"]
    assert "SessionStart" in json.loads((home / ".claude" / "settings.json").read_text())["hooks"]
    # now Claude Code is found (its dir): uninstall takes its hooks out and touches nothing else
    r = cfd.ctl("uninstall-hooks", env=env)
    assert r.returncode == 0, r.stderr
    assert f"Claude Code (found: {home / '.claude'}): removing" in r.stdout
    assert json.loads((home / ".claude" / "settings.json").read_text()) == {}
    assert [p.name for p in home.iterdir()] == [".claude"]


def test_the_agents_own_variables_say_where_it_is(cfd, tmp_path):
    """CODEX_HOME and XDG_CONFIG_HOME are where Codex and OpenCode look; so does detection."""
    codex_home, xdg = tmp_path / "codex-home", tmp_path / "xdg"
    codex_home.mkdir()
    (xdg / "opencode").mkdir(parents=True)
    (cfd.home / ".config" / "opencode").mkdir()  # not OpenCode's dir when XDG_CONFIG_HOME says otherwise
    env = dict(agent_env(cfd, tmp_path), CODEX_HOME=str(codex_home), XDG_CONFIG_HOME=str(xdg))
    r = cfd.ctl("install-hooks", "--dry-run", env=env)
    assert r.returncode == 0, r.stderr
    assert f"Codex (found: {codex_home}): installing" in r.stdout
    assert f"OpenCode (found: {xdg / 'opencode'}): installing" in r.stdout
    assert not (codex_home / "config.toml").exists() and not (xdg / "opencode" / "plugins").exists()  # dry run
    r = cfd.ctl("install-hooks", env=env)
    assert r.returncode == 0, r.stderr
    assert (codex_home / "config.toml").is_file() and (xdg / "opencode" / "plugins" / "confabd-sync.ts").is_file()
    assert not (cfd.home / ".codex").exists() and not (cfd.home / ".config" / "opencode" / "plugins").exists()


def test_provider_names_exactly_one_agent_found_or_not(cfd, tmp_path):
    (cfd.home / ".codex").mkdir()
    env = agent_env(cfd, tmp_path)
    r = cfd.ctl("install-hooks", "--provider", "cursor", env=env)  # not found, but asked for by name
    assert r.returncode == 0, r.stderr
    assert (cfd.home / ".cursor" / "hooks.json").is_file()
    assert not (cfd.home / ".codex" / "config.toml").exists()
    assert not (cfd.home / ".claude" / "settings.json").exists()
    # a bare --settings FILE is Claude Code's file, as before providers
    other = tmp_path / "other-settings.json"
    r = cfd.ctl("install-hooks", "--settings", str(other), env=env)
    assert r.returncode == 0, r.stderr
    assert "SessionStart" in json.loads(other.read_text())["hooks"]
    assert not (cfd.home / ".codex" / "config.toml").exists()


def test_uninstalling_cursor_hooks_that_were_never_there_writes_no_file(cfd, tmp_path):
    """Was a bug: uninstall-hooks --provider cursor created ~/.cursor/hooks.json with `{}` in it."""
    (cfd.home / ".cursor").mkdir()
    r = cfd.ctl("uninstall-hooks", "--provider", "cursor", env=agent_env(cfd, tmp_path))
    assert r.returncode == 0, r.stderr
    assert not (cfd.home / ".cursor" / "hooks.json").exists()
    assert os.listdir(cfd.home / ".cursor") == []


def test_one_agent_that_cannot_be_installed_does_not_stop_the_others(cfd, tmp_path):
    """OpenCode's plugins dir is a file: its install fails, said on stderr (was: a "cannot talk to the
    master" from ctl's catch-all), exit 1; the other agents still get their hooks."""
    (cfd.home / ".cursor").mkdir()
    (cfd.home / ".config" / "opencode").mkdir(parents=True)
    (cfd.home / ".config" / "opencode" / "plugins").write_text("not a directory\n")
    r = cfd.ctl("install-hooks", env=agent_env(cfd, tmp_path))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "OpenCode" in r.stderr, r.stderr
    assert "SessionStart" in json.loads((cfd.home / ".claude" / "settings.json").read_text())["hooks"]
    assert "sessionStart" in json.loads((cfd.home / ".cursor" / "hooks.json").read_text())["hooks"]
