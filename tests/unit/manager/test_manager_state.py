"""The state table: exactly the documented moves, nothing else."""

from __future__ import annotations

import itertools

import pytest

from manager.state import TRANSITIONS, IllegalTransition, ModelState, transition

S = ModelState
ALLOWED = {
    (S.STOPPED, S.STARTING),
    (S.STARTING, S.READY),
    (S.STARTING, S.FAILED),
    (S.READY, S.STOPPING),
    (S.READY, S.FAILED),
    (S.STOPPING, S.STOPPED),
    (S.STOPPING, S.FAILED),
    (S.FAILED, S.STARTING),
    (S.FAILED, S.STOPPING),
    (S.READY, S.FALLING_ASLEEP),
    (S.STOPPED, S.SLEEPING),
    (S.FALLING_ASLEEP, S.SLEEPING),
    (S.FALLING_ASLEEP, S.FAILED),
    (S.SLEEPING, S.WAKING),
    (S.SLEEPING, S.STOPPING),
    (S.SLEEPING, S.FAILED),
    (S.WAKING, S.READY),
    (S.WAKING, S.FAILED),
}


@pytest.mark.parametrize(("current", "new"), sorted(itertools.product(S, S)))
def test_transition_allows_exactly_the_table(current: ModelState, new: ModelState) -> None:
    if (current, new) in ALLOWED:
        assert transition(current, new) is new
    else:
        with pytest.raises(IllegalTransition, match=f"{current.value} -> {new.value}"):
            transition(current, new)


def test_every_state_has_a_way_out() -> None:
    assert set(TRANSITIONS) == set(S)
    assert all(TRANSITIONS[s] for s in S)


def test_states_serialise_as_their_names() -> None:
    assert [s.value for s in S] == [
        "stopped",
        "starting",
        "ready",
        "stopping",
        "failed",
        "falling_asleep",
        "sleeping",
        "waking",
    ]


def test_only_stopped_and_sleeping_models_hold_no_gpu_memory() -> None:
    assert {s for s in S if not s.on_gpu} == {S.STOPPED, S.SLEEPING}
