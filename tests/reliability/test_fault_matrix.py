"""The fast fault matrix: every fault kind against real workers; 0 lost, 0 duplicated, 0 reordered."""

from __future__ import annotations

import pytest

from tests.fakebackend import FakeBackend
from tests.reliability.harness import FAULTS, run_matrix


@pytest.mark.parametrize("seed", [1, 2])
def test_fault_matrix_loses_duplicates_and_reorders_nothing(tmp_path, seed):
    with FakeBackend() as backend:
        score = run_matrix(backend, tmp_path, sessions=4, steps=len(FAULTS), seed=seed, parallel=2)
    assert (score.lost, score.duplicated, score.reordered, score.wrong) == (0, 0, 0, 0), score
    assert score.events == score.sessions == 4, "one session_end per session"
    assert score.injected == {fault: 4 for fault in FAULTS}
