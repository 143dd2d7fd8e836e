"""confabctl doctor: each check through the real command, with the real master and the test backend."""

from __future__ import annotations

import json

from confabd.doctor import clock_check


def doctor(cfd, env=None):
    r = cfd.ctl("doctor", "--json", env=env)
    return r.returncode, {c["what"].split(":")[0].split(" ")[0]: c for c in json.loads(r.stdout)}


def test_doctor_says_what_is_missing_then_all_is_well(cfd):
    code, checks = doctor(cfd)
    assert code == 1
    assert checks["hooks"]["verdict"] == "FAIL" and checks["hooks"]["todo"] == "confabctl install-hooks"
    assert checks["master"]["verdict"] == "warn"
    assert cfd.ctl("install-hooks").returncode == 0
    cfd.master()
    code, checks = doctor(cfd)
    assert code == 0, checks
    assert {c["verdict"] for c in checks.values()} == {"ok"}, checks
    assert "the key is valid" in checks["backend"]["what"]
    assert "clock: within" in checks["clock"]["what"]
    table = cfd.ctl("doctor").stdout
    assert table.splitlines()[0].startswith("ok    hooks: SessionStart calls ")


def test_doctor_names_a_refused_key_an_unreachable_backend_and_a_missing_program(cfd, tmp_path):
    assert cfd.ctl("install-hooks").returncode == 0
    code, checks = doctor(cfd, env=dict(cfd.env, CONFAB_API_KEY="cfb_" + "r" * 40))
    assert code == 1 and checks["backend"]["verdict"] == "FAIL"
    assert "refused" in checks["backend"]["what"] and checks["backend"]["todo"] == "confabctl login"
    assert "r" * 40 not in json.dumps(checks)
    code, checks = doctor(cfd, env=dict(cfd.env, CONFAB_BACKEND_URL="http://127.0.0.1:9"))
    assert code == 1 and "not reachable" in checks["backend"]["what"]
    settings = cfd.home / ".claude" / "settings.json"
    gone = {event: [{"matcher": "*", "hooks": [{"type": "command", "command":
                                                 f"[ -x /gone/confabctl ] && exec /gone/confabctl hook {arg} || true"}]}]
            for event, arg in (("SessionStart", "session-start"), ("SessionEnd", "session-end"))}
    settings.write_text(json.dumps({"hooks": gone}))
    code, checks = doctor(cfd)
    assert code == 1 and "/gone/confabctl, which is not there" in checks["hooks"]["what"]


def test_clock_check():
    assert clock_check(1000.0, now=1010.0).verdict == "ok"
    skewed = clock_check(1000.0, now=2000.0)
    assert skewed.verdict == "warn" and "+1000 s" in skewed.what
    assert clock_check(None).verdict == "ok"


def test_doctor_checks_every_hook_install_hooks_writes(cfd):
    """The prompt hook too: without it a session whose SessionStart was missed is never caught."""
    assert cfd.ctl("install-hooks").returncode == 0
    settings = cfd.home / ".claude" / "settings.json"
    document = json.loads(settings.read_text())
    del document["hooks"]["UserPromptSubmit"]
    settings.write_text(json.dumps(document))
    r = cfd.ctl("doctor", "--json")
    assert r.returncode == 1
    [missing] = [c for c in json.loads(r.stdout) if c["verdict"] == "FAIL"]
    assert "no UserPromptSubmit hook of ours" in missing["what"] and missing["todo"] == "confabctl install-hooks"


def test_doctor_checks_the_link_hooks_too(cfd):
    """Without the tool hooks sessions are still shipped, only the commit and PR links are lost: a warning."""
    assert cfd.ctl("install-hooks").returncode == 0
    settings = cfd.home / ".claude" / "settings.json"
    document = json.loads(settings.read_text())
    checks = json.loads(cfd.ctl("doctor", "--json").stdout)
    assert any(c["verdict"] == "ok" and c["what"].startswith("links: PostToolUse calls ") for c in checks)
    del document["hooks"]["PreToolUse"]
    settings.write_text(json.dumps(document))
    checks = json.loads(cfd.ctl("doctor", "--json").stdout)
    [missing] = [c for c in checks if "no PreToolUse hook of ours" in c["what"]]
    assert missing["verdict"] == "warn" and missing["todo"] == "confabctl install-hooks"


def agent_hook_checks(cfd, env):
    r = cfd.ctl("doctor", "--json", env=env)
    return r.returncode, [c for c in json.loads(r.stdout)
                          if c["what"].startswith(("hooks: Codex", "hooks: Cursor", "hooks: OpenCode"))]


def test_doctor_checks_the_hooks_of_every_agent_found_and_only_those(cfd, tmp_path):
    (tmp_path / "bin").mkdir()
    env = {k: v for k, v in cfd.env.items() if k not in ("CODEX_HOME", "XDG_CONFIG_HOME")}
    env["PATH"] = str(tmp_path / "bin")  # no agent program from this machine
    code, checks = agent_hook_checks(cfd, env)
    assert checks == []  # only Claude Code is here: nothing said of the others
    for directory in (".codex", ".cursor", ".config/opencode"):
        (cfd.home / directory).mkdir(parents=True)
    code, checks = agent_hook_checks(cfd, env)
    assert code == 1
    assert [(c["verdict"], c["todo"]) for c in checks] == [
        ("FAIL", "confabctl install-hooks --provider codex"),
        ("FAIL", "confabctl install-hooks --provider cursor"), ("FAIL", "confabctl install-hooks --provider cursor"),
        ("FAIL", "confabctl install-hooks --provider opencode")]
    assert "no SessionStart hook of ours" in checks[0]["what"] and "no sessionEnd hook of ours" in checks[2]["what"]

    assert cfd.ctl("install-hooks", env=env).returncode == 0
    cfd.master()
    code, checks = agent_hook_checks(cfd, env)
    assert {c["verdict"] for c in checks} == {"ok"} and len(checks) == 4, checks
    assert code == 0
    assert checks[0]["what"].startswith("hooks: Codex SessionStart calls /")

    config = cfd.home / ".codex" / "config.toml"
    good = config.read_text()
    config.write_text(good.replace("hooks = true", "hooks = false"))
    assert "[features] hooks is not true" in agent_hook_checks(cfd, env)[1][0]["what"]
    digest = good.split('trusted_hash = "sha256:')[1][:4]
    config.write_text(good.replace('trusted_hash = "sha256:' + digest, 'trusted_hash = "sha256:0000'))
    assert "not trusted as written (Codex skips it)" in agent_hook_checks(cfd, env)[1][0]["what"]
    config.write_text(good)

    hooks = cfd.home / ".cursor" / "hooks.json"
    document = json.loads(hooks.read_text())
    document["hooks"]["sessionEnd"] = [{"type": "command", "command":
                                        "[ -x /gone/confabctl ] && exec /gone/confabctl hook session-end --provider cursor || true"}]
    hooks.write_text(json.dumps(document))
    (cfd.home / ".config" / "opencode" / "plugins" / "confabd-sync.ts").unlink()
    code, checks = agent_hook_checks(cfd, env)
    assert code == 1
    assert [c["verdict"] for c in checks] == ["ok", "ok", "FAIL", "FAIL"]
    assert "sessionEnd calls /gone/confabctl, which is not there" in checks[2]["what"]
    assert "no confabd plugin" in checks[3]["what"]
