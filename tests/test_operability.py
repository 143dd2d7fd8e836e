"""Issue 13: status that tells the truth in an outage, a quiet log during one, metrics, a rotating log.

Real master, real workers, the real FakeBackend stopped (connection refused) and started
again on the same port; every wait is a condition with a deadline.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import stat
import subprocess
import time

import pytest

from tests.conftest import PYTHON, backend_has_file, fixture_lines, pid_alive
from tests.waiting import wait_until

LIBRARY_NOISE = ("Giving up", "HTTPConnectionPool", "Max retries exceeded", "object at 0x", "Retrying (")


def append(path, lines):
    with open(path, "ab") as f:
        f.writelines(lines)


def register(cfd, eid, lines):
    path = cfd.transcript(eid)
    path.write_bytes(b"".join(lines))
    r = cfd.ctl("register", "--session-id", eid, "--transcript", str(path), "--cwd", "/home/dev/proj")
    assert r.returncode == 0, r.stderr
    return path


def sessions_by_id(cfd):
    return {s["external_id"]: s for s in cfd.status()["sessions"]}


def all_delivered(cfd, paths):
    backend = cfd.backend
    if not all(backend_has_file(backend, eid, path) for eid, path in paths.items()):
        return False
    rows = sessions_by_id(cfd)
    return all(rows.get(eid, {}).get("state") == "syncing" and rows[eid]["behind"] == 0 for eid in paths) and rows


def log_lines_since(master, offset):
    return master.log.read_bytes()[offset:].decode(errors="replace").splitlines()


def test_status_during_an_outage_tells_the_truth(cfd):
    """Backend stopped: sessions say `unreachable` in plain words, their last confirmed delivery stays,
    `behind` grows with every line Claude Code writes; backend back: `syncing`, behind 0."""
    backend = cfd.backend
    master = cfd.master()
    lines = fixture_lines()
    idle, busy = "outage-idle", "outage-busy"
    paths = {idle: register(cfd, idle, lines[:4]), busy: register(cfd, busy, lines[:4])}
    before = wait_until(lambda: all_delivered(cfd, paths), what="both sessions delivered, behind 0")
    for eid in paths:
        assert before[eid]["sink"] == backend.url and before[eid]["last_sync_at"]
        assert before[eid]["lines_confirmed"] == before[eid]["lines_complete"] == 4
    delivered_at = {eid: before[eid]["last_sync_at"] for eid in paths}

    backend.stop()  # a real outage: nothing listens on the port any more
    seen = []

    def observed():
        rows = sessions_by_id(cfd)
        seen.append(rows)
        return rows

    append(paths[busy], lines[4:6])
    rows = wait_until(lambda: (r := observed()) and r[busy]["state"] == "unreachable" and r[busy]["behind"] == 2
                      and r[idle]["state"] == "unreachable" and r, what="both sessions unreachable")
    assert "cannot reach" in rows[busy]["last_error"] and backend.url in rows[busy]["last_error"]
    assert not any(noise in json.dumps(rows) for noise in LIBRARY_NOISE), rows
    assert rows[busy]["unreachable_since"] and rows[idle]["behind"] == 0
    append(paths[busy], lines[6:9])  # Claude Code goes on writing: behind grows while nothing can go out
    rows = wait_until(lambda: (r := observed()) and r[busy]["behind"] == 5 and r, what="behind to grow to 5")
    assert rows[busy]["lines_complete"] == 9 and rows[busy]["lines_confirmed"] == 4
    status = cfd.status()
    assert [s["reachable"] for s in status["sinks"]] == [False]
    table = cfd.ctl("status", env=dict(cfd.env, COLUMNS="80"))
    assert table.returncode == 0 and "unreachable" in table.stdout and all(len(r) <= 80 for r in table.stdout.splitlines())
    # The idle session made a pass every 200 ms all along: none of them was a delivery.
    assert all(r[eid]["last_sync_at"] == delivered_at[eid] for r in seen for eid in paths), seen

    backend.start()  # the same port: the backend is back
    after = wait_until(lambda: all_delivered(cfd, paths), timeout=120, what="both sessions syncing, behind 0")
    assert after[busy]["last_sync_at"] > delivered_at[busy] and after[busy]["lines_confirmed"] == 9
    assert after[idle]["last_sync_at"] == delivered_at[idle]  # it had nothing to deliver
    assert [s["reachable"] for s in cfd.status()["sinks"]] == [True]
    text = master.log_text()
    assert "is unreachable" in text and "reachable again" in text


@pytest.mark.slow
def test_an_outage_of_20_sessions_takes_a_few_log_lines(cfd):
    """20 sessions, the backend down for 60 s while they keep writing: fewer than 20 log lines
    (an unreachable line, a back line), no library noise (issue 13, finding 4)."""
    backend = cfd.backend
    master = cfd.master("--log-level", "info")  # what a service logs (the fixture's default is debug)
    lines = fixture_lines()
    paths = {f"flood-{i:02d}": register(cfd, f"flood-{i:02d}", lines[:2]) for i in range(20)}
    wait_until(lambda: all_delivered(cfd, paths), timeout=60, what="20 sessions delivered")
    mark = master.log.stat().st_size

    backend.stop()
    outage_ends = time.monotonic() + 60  # the scenario: a 60 s outage (not a wait for a condition)
    n = 2
    while time.monotonic() < outage_ends:
        for path in paths.values():
            append(path, lines[n:n + 1])
        n = n + 1 if n + 1 < len(lines) else n
        time.sleep(5)
    wait_until(lambda: any("is unreachable" in line for line in log_lines_since(master, mark)),
               what="the master's unreachable line")
    rows = sessions_by_id(cfd)
    assert all(r["state"] == "unreachable" and r["behind"] > 0 for r in rows.values()), rows
    backend.start()
    wait_until(lambda: all_delivered(cfd, paths), timeout=150, what="every session delivered again")
    window = log_lines_since(master, mark)
    print(f"{len(window)} log lines during a 60 s outage of 20 sessions:\n" + "\n".join(window))
    assert len(window) < 20, window
    assert sum("is unreachable" in line for line in window) == 1, window
    assert sum("reachable again" in line for line in window) == 1, window
    assert not any(noise in line for line in master.log_text().splitlines() for noise in LIBRARY_NOISE)


# -- metrics -------------------------------------------------------------------------------------


SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse_prometheus(text):
    """{(name, frozenset(labels)): value}, checking the text format's rules as it goes: every
    sample's family has a TYPE before it, label values are escaped, values are numbers."""
    samples, types = {}, {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge") and name not in types
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        match = SAMPLE_RE.match(line)
        assert match, line
        name, labels, value = match.groups()
        assert name in types, f"{name} has no TYPE before its samples"
        pairs = LABEL_RE.findall(labels or "")
        assert ",".join(f'{k}="{v}"' for k, v in pairs) == (labels or ""), line
        key = (name, frozenset((k, v.encode().decode("unicode_escape")) for k, v in pairs))
        assert key not in samples, f"duplicate sample {line}"
        samples[key] = float(value)
    return samples


def sample(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def test_metrics_after_a_real_sync_match_the_backend(cfd):
    backend = cfd.backend
    cfd.master()
    lines = fixture_lines("python-to-rust-port.jsonl")
    paths = {f"metrics-{i}": register(cfd, f"metrics-{i}", lines[: 5 + i]) for i in range(3)}
    wait_until(lambda: all_delivered(cfd, paths), what="three sessions delivered")
    backend.fail_next(1, 500, path="chunk")  # one refused chunk: an error of its own kind, then delivered
    append(paths["metrics-0"], lines[5:20])
    wait_until(lambda: all_delivered(cfd, paths), what="the appended lines delivered")
    worker = sessions_by_id(cfd)["metrics-1"]["worker_pid"]
    os.kill(worker, signal.SIGKILL)  # a worker restart; nothing is counted twice after it
    wait_until(lambda: (w := sessions_by_id(cfd)["metrics-1"]["worker_pid"]) and w != worker
               and all_delivered(cfd, paths), what="the killed worker replaced")

    r = cfd.ctl("metrics")
    assert r.returncode == 0, r.stderr
    samples = parse_prometheus(r.stdout)
    url = backend.url
    held = {eid: backend.lines(eid, path.name) for eid, path in paths.items()}
    assert sample(samples, "confabd_lines_delivered_total", sink=url) == sum(map(len, held.values())) == 5 + 6 + 7 + 15
    assert sample(samples, "confabd_bytes_delivered_total", sink=url) == sum(
        len(line.encode()) + 1 for got in held.values() for line in got)
    assert sample(samples, "confabd_chunks_total", sink=url) == sum(
        sum(backend.chunk_counts(eid).values()) for eid in paths)
    assert sample(samples, "confabd_errors_total", sink=url, kind="server_error") == 1
    assert sample(samples, "confabd_worker_restarts_total", sink=url) == 1
    assert sample(samples, "confabd_lines_behind", sink=url) == 0
    assert sample(samples, "confabd_sink_up", sink=url) == 1
    assert sample(samples, "confabd_sessions", state="syncing") == 3
    assert sample(samples, "confabd_sessions", state="unreachable") == 0

    totals = cfd.status()["sinks"]  # status --json: the same numbers, from the same place
    assert [(t["sink"], t["lines_delivered"], t["bytes_delivered"], t["chunks"], t["worker_restarts"], t["errors"])
            for t in totals] == [(url, 33, sample(samples, "confabd_bytes_delivered_total", sink=url),
                                  sample(samples, "confabd_chunks_total", sink=url), 1, {"server_error": 1})]
    as_json = json.loads(cfd.ctl("metrics", "--json").stdout)
    assert as_json["sinks"] == cfd.status()["sinks"] and as_json["sessions"]["syncing"] == 3
    out = cfd.root / "textfile" / "confabd.prom"
    out.parent.mkdir()
    assert cfd.ctl("metrics", "--output", str(out)).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 and os.listdir(out.parent) == ["confabd.prom"]
    assert sample(parse_prometheus(out.read_text()), "confabd_lines_delivered_total", sink=url) == 33


# -- the user-mode log file ---------------------------------------------------------------------


def test_the_detached_user_mode_master_rotates_its_log_file(cfd):
    env = dict(cfd.env, CONFABD_LOG_ROTATE_BYTES="2048")
    started = subprocess.run([PYTHON, "-m", "confabd.master_cli", "--daemon"], env=env,
                             capture_output=True, text=True, timeout=30)
    assert started.returncode == 0, started.stderr
    pid = cfd.status()["master"]["pid"]
    logs = cfd.home / ".confab" / "logs"
    try:
        for i in range(60):  # each session: registered, worker started, finishing, finished
            eid = f"rotate-{i:02d}"
            assert cfd.ctl("register", "--session-id", eid, "--transcript", str(cfd.transcript(eid))).returncode == 0
            assert cfd.ctl("stop", eid, "--wait").returncode == 0
            if (logs / "confabd.log.2").exists():
                break
        names = sorted(os.listdir(logs))
        assert names[:3] == ["confabd.log", "confabd.log.1", "confabd.log.2"], names
        assert len(names) <= 6  # confabd.log and LOG_BACKUPS (5) old ones
        for name in names:
            st = os.stat(logs / name)
            # The master rotates before a record would pass 2048 bytes; a worker started before a
            # rotation still appends its few lines to the file it inherited (README).
            assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size <= 2 * 2048, (name, st.st_size)
        assert "rotate-" in (logs / "confabd.log").read_text()  # the master writes to the new file
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pid_alive(pid), timeout=20)


# -- the pieces, on their own --------------------------------------------------------------------


def test_backend_health_says_down_once_then_every_10_minutes_then_back(caplog):
    from confabd.backend_health import BackendHealth
    from confabd.delivery import Tally

    now = [1000.0]
    health = BackendHealth(clock=lambda: now[0])
    url = "https://confab.example"
    caplog.set_level(logging.INFO, logger="confabd.master")
    health.observe("a", url, Tally(reached_at=990.0))
    for key in "abc":  # three sessions fail, again and again: one line
        for _ in range(3):
            now[0] += 1
            health.observe(key, url, Tally(reached_at=990.0, unreachable_at=now[0], unreachable="connection refused"))
    health.tick()
    now[0] = 1001 + 599  # the first failure was at 1001: the summary is due 600 s later
    health.tick()
    assert [r.getMessage() for r in caplog.records] == [
        f"backend {url} is unreachable (connection refused): 1 session(s) cannot deliver; their lines wait "
        "and are retried, nothing is lost"]
    now[0] += 1
    health.tick()
    assert "still unreachable (connection refused) for 3 session(s), since 1970-01-01 00:16:41 UTC" \
        in caplog.records[-1].getMessage()
    health.observe("b", url, Tally(reached_at=now[0] + 1))
    assert caplog.records[-1].getMessage().startswith(f"backend {url} is reachable again, after 10 min")
    assert len(caplog.records) == 3 and health.down(url) is None


def test_library_warnings_are_debug_records(capfd):
    from confabd import logs

    handler = logging.StreamHandler()
    handler.addFilter(logs.QuietLibraries())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:], root.level = [handler], logging.INFO
    try:
        logging.getLogger("backoff").error("Giving up sync_until_idle(...) after 7 tries")
        logging.getLogger("urllib3.connectionpool").warning("Connection pool is full, discarding connection")
        logging.getLogger("confabd.master").warning("ours")
    finally:
        root.handlers[:], root.level = saved
    assert capfd.readouterr().err == "ours\n"


def test_status_shows_a_state_it_does_not_know():
    from confabd.cli import format_status

    status = {"master": {"version": "9", "pid": 1, "mode": "user", "uptime_s": 1, "socket": "/s"},
              "sessions": [{"external_id": "abc", "state": "levitating", "files": {}}]}
    assert "levitating" in format_status(status, 80, colour=True)


def test_what_a_worker_reports_is_bounded_in_the_master():
    """A worker runs as its user, who can make it report anything: sinks by the thousand, made-up
    error kinds. The master keeps a few sinks per owner and the error kinds it knows."""
    from types import SimpleNamespace

    from confabd import metrics, worker_api
    from confabd.backend_health import BackendHealth
    from confabd.delivery import Tally

    meter = metrics.Metrics(BackendHealth())
    session = SimpleNamespace(key=(1000, "s"), owner=1000, proc=SimpleNamespace(pid=42), report=None,
                              phase=worker_api.Phase.SYNCING)
    for i in range(1000):
        tally = Tally(lines=i, errors={f"made-up-{i}": 1, "auth": i})
        meter.take_report(session, worker_api.Report(phase=worker_api.Phase.SYNCING, sink=f"https://x{i}." + "y" * 900,
                                                     tally=tally))
    sinks = {sink for owner, sink in meter.by_sink}
    assert len(sinks) == metrics.MAX_SINKS_PER_OWNER + 1 and metrics.OTHER_SINK in sinks
    assert all(len(sink) <= metrics.MAX_SINK_NAME for sink in sinks)
    kinds = {kind for totals in meter.by_sink.values() for kind in totals.errors}
    assert kinds <= {"other", "auth"}
    assert len(meter.health.backends) <= metrics.MAX_SINKS_PER_OWNER + 1
