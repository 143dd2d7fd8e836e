"""confabctl list, save by id prefix / several / --all [--since], and redaction-test, through the real commands."""

from __future__ import annotations

import json
import os
import time

from tests.conftest import backend_has_file, fixture_lines
from tests.waiting import wait_until


def make_session(cfd, eid, prompt, age_s=0.0, cwd="/home/dev/proj"):
    path = cfd.transcript(eid)
    user = {"type": "user", "cwd": cwd, "message": {"role": "user", "content": prompt}}
    path.write_bytes(json.dumps(user).encode() + b"\n" + b"".join(fixture_lines()[:3]))
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def listed(cfd, *args):
    r = cfd.ctl("list", "--json", *args)
    assert r.returncode == 0, r.stderr
    return {s["external_id"]: s for s in json.loads(r.stdout)["sessions"]}


def test_list_shows_sessions_newest_first_with_title_project_and_what_confabd_holds(cfd):
    make_session(cfd, "aaaa1111-old", "the oldest prompt", age_s=10 * 86400)
    make_session(cfd, "bbbb2222-mid", "a middle prompt", age_s=3600, cwd="/home/dev/other")
    make_session(cfd, "cccc3333-new", "the newest prompt")
    (cfd.project / "agent-abcdef123.jsonl").write_bytes(b"{}\n")  # an agent file is no session
    sessions = listed(cfd)
    assert list(sessions) == ["cccc3333-new", "bbbb2222-mid", "aaaa1111-old"]
    assert sessions["bbbb2222-mid"]["title"] == "a middle prompt" and sessions["bbbb2222-mid"]["project"] == "/home/dev/other"
    assert {s["local"] for s in sessions.values()} == {"-"}
    assert list(listed(cfd, "--since", "2d")) == ["cccc3333-new", "bbbb2222-mid"]
    cfd.master()
    assert cfd.ctl("register", "--session-id", "cccc3333-new", "--transcript",
                   str(cfd.transcript("cccc3333-new"))).returncode == 0
    wait_until(lambda: listed(cfd)["cccc3333-new"]["local"] == "syncing", what="the running session")
    table = cfd.ctl("list").stdout.splitlines()
    assert table[0].split() == ["ID", "AGENT", "AGE", "LOCAL", "PROJECT", "TITLE"]
    assert table[1].startswith("cccc3333") and "syncing" in table[1] and "the newest prompt" in table[1]
    assert cfd.ctl("list", "--since", "soon").returncode == 2


def test_save_by_prefix_several_and_all_since(cfd):
    backend = cfd.backend
    paths = {eid: make_session(cfd, eid, f"prompt of {eid}", age_s=age)
             for eid, age in (("dead0001-a", 9 * 86400), ("dead0002-b", 60), ("beef0003-c", 30))}
    r = cfd.ctl("save", "dead")
    assert r.returncode == 1 and "is the start of 2 sessions" in r.stderr
    r = cfd.ctl("save", "dead0002", "beef")
    assert r.returncode == 0, r.stderr
    assert "saved 2 of 2 sessions" in r.stdout
    assert backend_has_file(backend, "dead0002-b", paths["dead0002-b"])
    assert backend_has_file(backend, "beef0003-c", paths["beef0003-c"])
    assert backend.lines("dead0001-a", paths["dead0001-a"].name) == []
    r = cfd.ctl("save", "--all", "--since", "1d")
    assert r.returncode == 0 and "saved 2 of 2 sessions" in r.stdout, r.stdout + r.stderr
    assert backend.lines("dead0001-a", paths["dead0001-a"].name) == []
    r = cfd.ctl("save", "--all")  # the old one too; the others are already whole: nothing sent twice
    assert r.returncode == 0 and "saved 3 of 3 sessions" in r.stdout
    for eid, path in paths.items():
        assert backend_has_file(backend, eid, path)
    assert cfd.ctl("save").returncode == 2 and cfd.ctl("save", "x", "--all").returncode == 2


def test_redaction_test_reports_without_printing_a_secret(cfd, tmp_path):
    key = "cfb_" + "a-b_" * 10
    sample = tmp_path / "sample.jsonl"
    sample.write_text(json.dumps({"type": "user", "message": {"content": f"my key is {key} and AKIAABCDEFGHIJKLMNOP"}})
                      + "\n" + '{"clean": true}\n')
    r = cfd.ctl("redaction-test", str(sample), "--show")
    assert r.returncode == 0, r.stderr
    assert "redaction is off" in r.stdout  # no redaction in this user's config: the defaults are shown
    assert "line 1: 1 AWS_KEY, 1 CONFAB_KEY" in r.stdout
    assert "1 of 2 lines would be redacted" in r.stdout
    assert key not in r.stdout and "AKIAABCDEFGHIJKLMNOP" not in r.stdout
    assert "[REDACTED:CONFAB_KEY]" in r.stdout
    assert cfd.ctl("redaction-test", str(tmp_path / "missing.jsonl")).returncode == 1
