"""Claude Code workflow files (issue 14, item 5): `<session>/subagents/workflows/<runId>/agent-*.jsonl` as
`agent` and `journal.jsonl` as `workflow_journal`, under the path-shaped names the newer Go client sends, only
to a backend whose `GET /api/v1/capabilities` says so; the local archive keeps them too."""

from __future__ import annotations

import json
import os

import pytest

from confabd import discovery
from tests.conftest import Confabd, fixture_lines
from tests.waiting import wait_until

RUN = "wr_01abc"
AGENT = f"subagents/workflows/{RUN}/agent-a1b2c3.jsonl"
JOURNAL = f"subagents/workflows/{RUN}/journal.jsonl"


def workflow_session(cfd, eid):
    """A transcript, one workflow run with an agent, its journal and the files never sent."""
    path = cfd.transcript(eid)
    path.write_bytes(b"".join(fixture_lines()))
    run_dir = path.with_suffix("") / "subagents" / "workflows" / RUN
    run_dir.mkdir(parents=True)
    agent_lines = fixture_lines("coverage-test-fix.jsonl")[:7]
    (run_dir / "agent-a1b2c3.jsonl").write_bytes(b"".join(agent_lines))
    (run_dir / "journal.jsonl").write_bytes(b'{"step": 1}\n{"step": 2}\n')
    (run_dir / "agent-a1b2c3.meta.json").write_text("{}")
    (run_dir / f"wf_{RUN}.json").write_text("{}")
    return path, run_dir


def finish(cfd, eid):
    assert cfd.ctl("stop", eid, "--wait").returncode == 0


def test_workflow_files_go_under_their_path_shaped_names(cfd):
    backend, eid = cfd.backend, "workflow-session"
    cfd.master()
    path, run_dir = workflow_session(cfd, eid)
    assert cfd.ctl("register", "--session-id", eid, "--transcript", str(path)).returncode == 0
    backend.wait_for(lambda: backend.file_bytes(eid, JOURNAL) == (run_dir / "journal.jsonl").read_bytes())
    backend.wait_for(lambda: backend.file_bytes(eid, AGENT) == (run_dir / "agent-a1b2c3.jsonl").read_bytes())
    with open(run_dir / "journal.jsonl", "ab") as f:  # a run goes on: its files grow
        f.write(b'{"step": 3}\n')
    backend.wait_for(lambda: len(backend.lines(eid, JOURNAL)) == 3)
    finish(cfd, eid)
    types = backend.file_types(eid)
    assert types == {path.name: "transcript", AGENT: "agent", JOURNAL: "workflow_journal"}
    probes = [r for r in backend.requests_log() if r.get("path") == "/api/v1/capabilities"]
    assert len(probes) == 1  # cached for the backend


@pytest.mark.parametrize("capabilities, sent", [
    (None, set()),  # an older server: 404
    ({"workflow_files": True}, {AGENT}),
    ({"workflow_journal": True, "workflow_files": False}, {JOURNAL}),
])
def test_a_backend_without_the_capability_gets_none_said_once(cfd, capabilities, sent):
    backend, eid = cfd.backend, "gated"
    backend.capabilities = capabilities
    master = cfd.master()
    path, run_dir = workflow_session(cfd, eid)
    assert cfd.ctl("register", "--session-id", eid, "--transcript", str(path)).returncode == 0
    backend.wait_for(lambda: backend.file_bytes(eid, path.name) == path.read_bytes())
    wait_until(lambda: len(backend.chunk_counts(eid)) == 1 + len(sent))
    cycles = len([r for r in backend.requests_log() if r.get("path") == "/api/v1/sync/chunk"])
    with open(path, "ab") as f:  # more cycles pass
        f.writelines(fixture_lines("coverage-test-fix.jsonl")[:3])
    backend.wait_for(lambda: backend.file_bytes(eid, path.name) == path.read_bytes())
    finish(cfd, eid)
    assert set(backend.file_types(eid)) - {path.name} == sent
    said = master.log_text().count("in its capabilities: workflow")
    assert said == 2 - len(sent), master.log_text()[-3000:]
    assert cycles >= 1


def test_the_archive_keeps_workflow_files_and_exports_them_in_place(tmp_path):
    cfd = Confabd(tmp_path, None)  # no backend: the local archive
    try:
        eid = "archived-workflow"
        path, run_dir = workflow_session(cfd, eid)
        r = cfd.ctl("save", str(path))
        assert r.returncode == 0, r.stderr
        out = tmp_path / "export"
        r = cfd.ctl("archive", "export", eid, "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert (out / AGENT).read_bytes() == (run_dir / "agent-a1b2c3.jsonl").read_bytes()
        assert (out / JOURNAL).read_bytes() == (run_dir / "journal.jsonl").read_bytes()
        listing = json.loads(cfd.ctl("archive", "list", "--json").stdout)
        assert listing
    finally:
        cfd.close()


@pytest.mark.parametrize("name", [
    "subagents/workflows/../agent-a1b2c3.jsonl", "subagents/workflows/r/../../x.jsonl", "/etc/passwd",
    "subagents/workflows/r/agent-a1b2c3.meta.json", "subagents/workflows/r/wf_r.json",
    "subagents/workflows/r/sub/journal.jsonl", "subagents/workflows/.r/journal.jsonl",
    "subagents/other/r/journal.jsonl", "workflows/r/journal.jsonl", "subagents/workflows//journal.jsonl",
    "subagents/workflows/" + "r" * 500 + "/journal.jsonl", "subagents\\workflows\\r\\journal.jsonl",
])
def test_only_the_workflow_shape_is_a_sendable_path(name):
    assert discovery.sendable_file_type(name) == ""


def test_the_shapes_we_send():
    assert discovery.sendable_file_type(AGENT) == "agent"
    assert discovery.sendable_file_type(JOURNAL) == "workflow_journal"
    assert discovery.sendable_file_type("agent-a1b2c3.jsonl") == "agent"


def test_a_symlinked_run_dir_or_file_is_not_read(tmp_path):
    transcript = tmp_path / "proj" / "s.jsonl"
    transcript.parent.mkdir()
    transcript.write_text("")
    workflows = tmp_path / "proj" / "s" / "subagents" / "workflows"
    workflows.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "journal.jsonl").write_text("secret\n")
    os.symlink(elsewhere, workflows / "linked")
    (workflows / "real").mkdir()
    os.symlink(elsewhere / "journal.jsonl", workflows / "real" / "journal.jsonl")
    (workflows / "real" / "agent-ok1.jsonl").write_text("{}\n")
    locator = discovery.SubagentLocator(str(transcript))
    assert locator.scan_workflows() == {
        "subagents/workflows/real/agent-ok1.jsonl": (str(workflows / "real" / "agent-ok1.jsonl"), "agent")}
    assert locator.locate("subagents/workflows/linked/journal.jsonl") is None
    assert locator.locate("subagents/workflows/real/journal.jsonl") is None


def test_a_failed_probe_is_asked_again_next_cycle(cfd):
    """A 5xx or an unreachable backend is no answer: the workflow files wait, and the next cycle asks again."""
    backend, eid = cfd.backend, "probe-fails"
    backend.fail_next(2, 503, path="capabilities")
    cfd.master()
    path, run_dir = workflow_session(cfd, eid)
    assert cfd.ctl("register", "--session-id", eid, "--transcript", str(path)).returncode == 0
    backend.wait_for(lambda: backend.file_bytes(eid, JOURNAL) == (run_dir / "journal.jsonl").read_bytes())
    probes = [r["status"] for r in backend.requests_log() if r.get("path") == "/api/v1/capabilities"]
    assert probes == [503, 503, 200]  # one probe per cycle, not one per file
    finish(cfd, eid)
    assert backend.file_bytes(eid, AGENT) == (run_dir / "agent-a1b2c3.jsonl").read_bytes()
