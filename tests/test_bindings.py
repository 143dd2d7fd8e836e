"""Credential bindings per Claude Code config dir, read as the Go confab CLI reads them (issue 14, item 6).

Through the real master and hooks, with two test backends: a session from a bound config dir goes to its
bound backend with its key, a default one to the default backend, and a session from a config dir with no
binding of its own goes nowhere (never to the default backend), until a binding for it appears.
"""

from __future__ import annotations

import json
import os

import pytest

from confabd import bindings
from confabd.config import BackendConfig, BindingCreds, load_backend_config
from tests.conftest import fixture_lines
from tests.fakebackend import FakeBackend
from tests.waiting import wait_until


@pytest.fixture
def bound_backend():
    with FakeBackend(api_keys=("cfb_bound_key_for_the_work_dir",)) as backend:
        yield backend


def write_transcript(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return path


def payload(eid, transcript):
    return {"session_id": eid, "transcript_path": str(transcript), "cwd": "/home/dev/proj",
            "hook_event_name": "SessionStart", "source": "startup"}


def test_sessions_go_to_their_bound_backend_and_never_fall_back(cfd, bound_backend, tmp_path):
    default = cfd.backend
    work_dir = cfd.home / ".claude-work"
    other_dir = cfd.home / ".claude-other"
    config = tmp_path / "elsewhere" / "confab.json"  # CONFAB_CONFIG_PATH, as the Go CLI reads it
    config.parent.mkdir()
    config.write_text(json.dumps({"bindings": {"claude-code": {
        str(work_dir): {"backend_url": bound_backend.url, "api_key": bound_backend.api_key}}}}))
    cfd.env["CONFAB_CONFIG_PATH"] = str(config)
    cfd.master()
    claude = cfd.claude()
    lines = fixture_lines()
    sessions = {
        "bound": write_transcript(work_dir / "projects" / "-home-dev-proj" / "bound.jsonl", lines),
        "default": write_transcript(cfd.project / "default.jsonl", lines),
        "unbound": write_transcript(other_dir / "projects" / "-home-dev-proj" / "unbound.jsonl", lines),
    }
    for eid, transcript in sessions.items():
        code, _, err = claude.hook("session-start", payload(eid, transcript))
        assert code == 0 and not err, err

    bound_backend.wait_for(lambda: bound_backend.file_bytes("bound", "bound.jsonl") == b"".join(lines))
    default.wait_for(lambda: default.file_bytes("default", "default.jsonl") == b"".join(lines))
    s = wait_until(lambda: (x := cfd.session("unbound")) and x["last_error"] and x)
    assert "no confab binding for claude-code at" in s["last_error"] and str(other_dir) in s["last_error"]
    assert bound_backend.session_id("default") is None and default.session_id("bound") is None
    assert bound_backend.session_id("unbound") is None and default.session_id("unbound") is None
    assert json.loads(cfd.state_file("bound").read_text())["config_dir"] == str(work_dir)

    # The binding appears (e.g. `confab setup --config-dir`): the next cycle sends it there.
    data = json.loads(config.read_text())
    data["bindings"]["claude-code"][str(other_dir)] = {"backend_url": bound_backend.url,
                                                        "api_key": bound_backend.api_key}
    config.write_text(json.dumps(data))
    bound_backend.wait_for(lambda: bound_backend.file_bytes("unbound", "unbound.jsonl") == b"".join(lines))
    assert default.session_id("unbound") is None

    # Adopted by the next master, a bound session keeps its backend: its State carries the binding.
    with open(sessions["bound"], "ab") as f:
        f.writelines(fixture_lines("coverage-test-fix.jsonl")[:5])
    cfd.masters[-1].stop()
    cfd.master()
    bound_backend.wait_for(lambda: bound_backend.file_bytes("bound", "bound.jsonl")
                           == sessions["bound"].read_bytes())
    claude.kill9()
    bound_backend.wait_for(lambda: bound_backend.events("bound"))
    assert default.session_id("bound") is None and default.events("bound") == []


def test_config_dir_from_the_transcript_as_the_go_client_derives_it(tmp_path):
    home = str(tmp_path)
    work = tmp_path / "work-claude"
    work.mkdir()
    link = tmp_path / "link-to-work"
    link.symlink_to(work)
    derive = bindings.config_dir_from_transcript
    assert derive(f"{link}/projects/-p/s.jsonl", home) == str(work)  # symlinks resolved
    assert derive(f"{tmp_path}/a/projects/x/projects/-p/s.jsonl", home) == f"{tmp_path}/a/projects/x"  # the last
    assert derive("relative/projects/-p/s.jsonl", home) == ""
    assert derive(f"{tmp_path}/elsewhere/-p/s.jsonl", home) == ""
    default = tmp_path / ".claude" / "projects" / "-p" / "s.jsonl"
    assert bindings.session_config_dir(str(default), home, env={}) == ""
    assert bindings.session_config_dir(f"{work}/projects/-p/s.jsonl", home, env={}) == str(work)
    # CONFAB_CLAUDE_DIR names the default dir (CLAUDE_CONFIG_DIR is not read, as by the Go client)
    assert bindings.session_config_dir(f"{work}/projects/-p/s.jsonl", home,
                                       env={"CONFAB_CLAUDE_DIR": str(link)}) == ""
    assert bindings.session_config_dir(f"{work}/projects/-p/s.jsonl", home,
                                       env={"CLAUDE_CONFIG_DIR": str(work)}) == str(work)


def test_backend_for_a_binding_keeps_the_global_settings_and_refuses_a_missing_one(tmp_path):
    config = BackendConfig(backend_url="https://default.example", api_key="cfb_default",
                           redaction={"enabled": True},
                           bindings={"claude-code": {"/w": BindingCreds("https://work.example", "cfb_work")}})
    assert bindings.backend_for(config, "") is config
    work = bindings.backend_for(config, "/w")
    assert (work.backend_url, work.api_key, work.redaction) == ("https://work.example", "cfb_work",
                                                                {"enabled": True})
    with pytest.raises(bindings.NoBinding):
        bindings.backend_for(config, "/other")
    no_bindings = BackendConfig(backend_url="https://default.example", api_key="cfb_default")
    assert bindings.backend_for(no_bindings, "/other") is no_bindings  # the Go client's short-circuit


def test_confab_config_path_is_read(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"backend_url": "https://x.example", "api_key": "cfb_x"}))
    got = load_backend_config(str(tmp_path / "home"), env={"CONFAB_CONFIG_PATH": str(path)})
    assert got.backend_url == "https://x.example" and got.api_key == "cfb_x"
