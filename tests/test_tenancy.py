"""Who may do what, in both tenancies, without root: the rules of tenancy.py as plain calls.

The same rules run end to end, with real users, in test_system_mode.py (root only).
"""

from __future__ import annotations

import os
import pwd

import pytest

from confabd import tenancy
from confabd.config import Settings
from confabd.errors import CorruptRecord
from confabd.privileges import PrivilegeError, User, UserSyncDir
from confabd.records import State
from confabd.store import SyncDir

ROOT, ALICE, BOB = 0, 4242, 4343
PEER_OF_ALICE = (1234, ALICE, ALICE)  # (pid, uid, gid) as SO_PEERCRED gives it


def system(tmp_path, **settings) -> tenancy.SystemTenancy:
    values = dict(max_sessions_per_user=2, max_requests_per_second=10.0, spool_dir=str(tmp_path / "spool"))
    values.update(settings)
    return tenancy.SystemTenancy(Settings(**values), registry_dir=str(tmp_path / "registry"))


def user(tmp_path) -> tenancy.UserTenancy:
    return tenancy.UserTenancy(Settings(), sync_dir=str(tmp_path / "sync"), home=str(tmp_path))


def test_kind_picks_the_tenancy_of_the_flag():
    assert tenancy.kind(False) is tenancy.UserTenancy and tenancy.kind(True) is tenancy.SystemTenancy
    for kind in (tenancy.UserTenancy, tenancy.SystemTenancy):
        assert tenancy.by_mode(kind.mode) is kind


def test_user_mode_has_one_owner_who_may_do_everything(tmp_path):
    t = user(tmp_path)
    owner = t.owner(PEER_OF_ALICE)
    assert owner == tenancy.USER_OWNER
    assert t.accepts(ALICE, 10_000) and t.throttle(owner) is None
    assert t.may_see(owner, owner) and t.shutdown_refusal(owner) == ""
    assert t.hook_pid(PEER_OF_ALICE, 999) == 999  # the hook's own word: it is the same user
    assert t.owns_process(owner, 1) and t.session_cap_refusal(owner, 10_000) == ""
    answers = []
    t.check_transcript(owner, "/anywhere.jsonl", answers.append)  # answered at once: the master's own files
    assert answers == [""]
    assert t.describe_owner(owner) == {}
    home = t.worker_home(owner, Settings(sync_interval_ms=7))
    assert (home.home, home.sync_dir, home.run_as, home.settings.sync_interval_ms) == \
        (str(tmp_path), str(tmp_path / "sync"), None, 7)


def test_system_mode_acts_for_the_peer_and_keeps_users_apart(tmp_path):
    t = system(tmp_path)
    assert t.owner(PEER_OF_ALICE) == ALICE
    assert t.may_see(ALICE, ALICE) and not t.may_see(ALICE, BOB) and t.may_see(ROOT, BOB)
    assert t.sees_all(ROOT) and not t.sees_all(ALICE)
    assert t.shutdown_refusal(ROOT) == "" and "only root" in t.shutdown_refusal(ALICE)
    assert t.hook_pid(PEER_OF_ALICE, 999) == 1234  # the kernel's word, not the client's
    assert t.describe_owner(ALICE) == {"uid": ALICE}


def test_system_mode_connection_cap_spares_root(tmp_path):
    t = system(tmp_path)
    cap = tenancy.MAX_CONNECTIONS_PER_USER
    assert t.accepts(ALICE, cap - 1) and not t.accepts(ALICE, cap)
    assert t.accepts(ROOT, 10 * cap)


def test_system_mode_throttles_a_burst_per_user_but_never_root(tmp_path):
    t = system(tmp_path, max_requests_per_second=10.0)
    assert all(t.throttle(ALICE) is None for _ in range(tenancy.MIN_BURST))
    refusal = t.throttle(ALICE)
    assert refusal is not None and 0 < refusal.retry_after <= 0.1 and f"uid {ALICE}" in refusal.message
    assert t.throttle(BOB) is None  # Bob has his own bucket
    assert all(t.throttle(ROOT) is None for _ in range(10 * tenancy.MIN_BURST))
    t.configure(Settings(max_requests_per_second=0))  # SIGHUP: 0 turns the limit off
    assert all(t.throttle(ALICE) is None for _ in range(10 * tenancy.MIN_BURST))


def test_system_mode_session_cap_spares_root(tmp_path):
    t = system(tmp_path, max_sessions_per_user=2)
    refusal = t.session_cap_refusal(ALICE, live=2)
    assert refusal.startswith(f"too many sessions: uid {ALICE} already has 2")
    assert t.session_cap_refusal(ALICE, live=1) == ""
    assert t.session_cap_refusal(ROOT, live=100) == ""  # root: no cap


def test_system_mode_process_ownership(tmp_path):
    t = system(tmp_path)
    assert t.owns_process(os.getuid(), os.getpid())
    assert not t.owns_process(ALICE, os.getpid())
    assert not t.owns_process(ALICE, 2 ** 22 + 12345)  # no such process
    assert t.owns_process(ROOT, os.getpid()) and t.owns_process(ROOT, 1)


def test_system_mode_registry_remembers_users_and_forgets_those_with_nothing_left(tmp_path):
    t = system(tmp_path)
    gone = 2 ** 31 - 7  # no passwd entry
    t.remember(gone)
    assert t.registry.uids() == [gone]
    assert t.owners_to_adopt() == [gone]
    answers = []
    t.session_ids(gone, lambda ids, error: answers.append((ids, error)))  # cannot list as nobody...
    assert answers == [([], f"uid {gone} has no passwd entry")]
    assert t.registry.uids() == []  # ...so it is forgotten


def test_a_system_worker_becomes_the_owner_with_the_owners_files(tmp_path):
    t = system(tmp_path)
    me = pwd.getpwuid(os.getuid())
    home = t.worker_home(me.pw_uid, Settings(state_dir="/daemon/sync", archive_path="/daemon/a.db",
                                             socket="/daemon/s", sync_interval_ms=7))
    assert home.run_as.uid == me.pw_uid and home.home == me.pw_dir
    assert home.sync_dir == os.path.join(me.pw_dir, ".confab", "sync")
    assert (home.settings.state_dir, home.settings.archive_path, home.settings.socket) == ("", "", "")
    assert home.settings.sync_interval_ms == 7
    with pytest.raises(PrivilegeError, match="no passwd entry"):
        t.worker_home(2 ** 31 - 7, Settings())


def corrupt_state(sync_dir) -> None:
    os.makedirs(sync_dir, mode=0o700, exist_ok=True)
    with open(os.path.join(sync_dir, "s-bad.json"), "w") as f:
        f.write("{not json")
    with open(os.path.join(sync_dir, "s-bad.inbox.jsonl"), "w") as f:
        f.write('{"type":"session_end"}\n')


def test_a_corrupt_state_is_an_error_in_both_sync_dirs_and_nothing_is_removed(tmp_path):
    """The system master's helper used to answer None (no State), after which the master deleted
    the State and the inbox; the user-mode SyncDir raised. Now both raise and keep the files."""
    me = pwd.getpwuid(os.getuid())
    own = User(me.pw_uid, me.pw_gid, me.pw_name, str(tmp_path / "home"))
    for sync_dir, errors in ((SyncDir(str(tmp_path / "sync")), CorruptRecord),
                             (UserSyncDir(own), PrivilegeError)):
        corrupt_state(sync_dir.path)
        with pytest.raises(errors, match="s-bad.json"):
            sync_dir.load_state("s-bad")
        assert sorted(os.listdir(sync_dir.path)) == ["s-bad.inbox.jsonl", "s-bad.json"]


def test_both_sync_dirs_list_states_with_their_session_end_alike(tmp_path):
    me = pwd.getpwuid(os.getuid())
    own = User(me.pw_uid, me.pw_gid, me.pw_name, str(tmp_path / "home"))
    for sync_dir in (SyncDir(str(tmp_path / "sync")), UserSyncDir(own)):
        local = SyncDir(sync_dir.path)
        for eid in ("ended", "live"):
            local.save_state(State(external_id=eid, transcript_path=f"/t/{eid}.jsonl"))
        with open(local.inbox_path("ended"), "w") as f:
            f.write('{"type":"session_end","hook_input":{}}\n')
        corrupt_state(sync_dir.path)  # skipped, with a warning, as before
        listed = sorted((state.external_id, ended) for state, ended in sync_dir.list_states_with_end())
        assert listed == [("ended", True), ("live", False)]


def test_both_tenancies_implement_the_whole_interface_and_nothing_else():
    def public(cls):
        return {name for name in dir(cls) if not name.startswith("_")}

    interface = public(tenancy.Tenancy) | set(tenancy.Tenancy.__annotations__)
    for cls in (tenancy.UserTenancy, tenancy.SystemTenancy):
        extra = {"user"}  # SystemTenancy: the passwd entry of an owner, or PrivilegeError
        assert interface <= public(cls) | set(cls.__annotations__), cls
        assert public(cls) - interface <= extra, (cls, public(cls) - interface)


def test_spool_notes_are_believed_by_their_owner_and_are_never_followed(tmp_path):
    """A note's owner (st_uid) is whom it speaks for; links and directories name nobody."""
    if os.geteuid() != 0:
        pytest.skip("making files of another uid needs root")
    spool = tenancy.Spool(str(tmp_path / "spool"))
    spool.ensure()
    assert oct(os.stat(spool.path).st_mode & 0o7777) == "0o1733"
    note = os.path.join(spool.path, f"uid{BOB}")  # its name says Bob; Alice made it
    open(note, "w").close()
    os.chown(note, ALICE, ALICE)
    target = tmp_path / "target"
    target.write_text("kept")
    os.chown(target, BOB, BOB)
    os.symlink(target, os.path.join(spool.path, "link"))
    os.mkdir(os.path.join(spool.path, "adir"))
    assert spool.take() == [ALICE]
    assert sorted(os.listdir(spool.path)) == ["adir"] and target.read_text() == "kept"
    assert spool.take() == []
    os.chmod(spool.path, 0o777)  # no sticky bit: anyone could have removed a note; not believed
    open(note, "w").close()
    assert spool.take() == []
