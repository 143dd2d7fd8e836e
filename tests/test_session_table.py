"""The per-owner live counts (max_sessions_per_user) kept as sessions come, go and fail,
against the scan they replace: the number of an owner's sessions in the table not FAILED."""

from __future__ import annotations

import random

import pytest

from confabd.sessions import Registration, Session
from confabd.session_table import SessionTable
from confabd.worker_api import Phase

OWNERS = (0, 1000, 1001)


def scanned(table: SessionTable, owner: int) -> int:
    return sum(1 for s in table.values() if s.owner == owner and s.phase != Phase.FAILED)


def new_session(rng: random.Random) -> Session:
    return Session(Registration(rng.choice(OWNERS), f"s{rng.randrange(8)}", "/t.jsonl"))


@pytest.mark.parametrize("seed", range(20))
def test_live_counts_follow_every_arrival_departure_and_failure(seed):
    rng = random.Random(seed)
    table, made = SessionTable(), []
    for _ in range(400):
        op = rng.randrange(5)
        if op == 0 or not made:  # a session comes in (replacing any with its key, as add does)
            session = new_session(rng)
            made.append(session)
            table[session.key] = session
        elif op == 1:  # forgotten (also keys that are gone, and sessions that were replaced)
            session = rng.choice(made)
            if rng.random() < 0.5:
                table.pop(session.key, None)
            elif session.key in table:
                del table[session.key]
        else:  # any session, in the table or not any more, moves phase: FAILED and back
            rng.choice(made).phase = rng.choice([Phase.FAILED, Phase.FAILED, *Phase])
        for owner in OWNERS:
            assert table.live_count(owner) == scanned(table, owner), (seed, owner)
    assert all(n > 0 for n in table.live.values())


def test_changes_the_counts_would_not_see_are_refused():
    table = SessionTable()
    for change in (lambda: table.update({}), lambda: table.setdefault(1, None), table.popitem, table.clear):
        with pytest.raises(TypeError):
            change()
