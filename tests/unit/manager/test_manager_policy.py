"""The pure swap decision: table tests for each rule, and properties over random histories."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manager.policy import WAIT, Decision, View, decide, next_model
from manager.state import ModelState

R, S, T, F = ModelState.READY, ModelState.STARTING, ModelState.STOPPING, ModelState.FAILED


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        pytest.param(View(), WAIT, id="idle"),
        pytest.param(
            View(waiters={"a": [5], "b": [2]}), Decision(start="b"), id="cold start: oldest"
        ),
        pytest.param(
            View(waiters={"b": [2], "a": [2]}), Decision(start="a"), id="tie: smaller name"
        ),
        pytest.param(View(waiters={"a": []}), WAIT, id="empty queue is no waiter"),
        pytest.param(View("a", S, waiters={"a": [1], "b": [0]}), WAIT, id="starting: wait"),
        pytest.param(View("a", T, waiters={"b": [0]}), WAIT, id="stopping: wait"),
        pytest.param(View("a", R), WAIT, id="ready, nothing to do"),
        pytest.param(
            View("a", R, waiters={"a": [1, 2, 3]}, batch_bound=1),
            Decision(grant=3),
            id="no contention: grant all, none counted",
        ),
        pytest.param(
            View("a", R, waiters={"a": [5, 11, 12, 13, 14], "b": [10]}, batch_bound=2),
            Decision(grant=3, counted=2),
            id="contention: older ones plus the bound",
        ),
        pytest.param(
            View(
                "a",
                R,
                waiters={"a": [5, 11, 12], "b": [10]},
                batch_bound=2,
                grants_since_contention=2,
            ),
            Decision(grant=1, counted=0),
            id="bound used up: only the older ones",
        ),
        pytest.param(
            View(
                "a", R, {"a": 1}, {"a": [11], "b": [10]}, batch_bound=2, grants_since_contention=2
            ),
            WAIT,
            id="bound used up, lease in flight: wait",
        ),
        pytest.param(
            View("a", R, {}, {"a": [11], "b": [10]}, batch_bound=2, grants_since_contention=2),
            Decision(stop="a"),
            id="bound used up, no lease: stop",
        ),
        pytest.param(View("a", R, {"a": 2}, {"b": [1]}), WAIT, id="others wait, leases out"),
        pytest.param(
            View("a", R, {"b": 0}, {"b": [1]}), Decision(stop="a"), id="others wait, idle"
        ),
        pytest.param(View("a", R, {"a": 1}, stop_requested=True), WAIT, id="stop asked, lease out"),
        pytest.param(View("a", R, stop_requested=True), Decision(stop="a"), id="stop asked"),
        pytest.param(
            View("a", R, waiters={"a": [1]}, stop_requested=True),
            Decision(stop="a"),
            id="stop asked: no new grants",
        ),
        pytest.param(View("a", F), WAIT, id="failed, nobody waits: keep (logs)"),
        pytest.param(
            View("a", F, waiters={"a": [1]}), Decision(stop="a"), id="failed: clean up to retry"
        ),
        pytest.param(
            View("a", F, waiters={"b": [1]}), Decision(stop="a"), id="failed: clean up for next"
        ),
        pytest.param(View("a", F, {"a": 1}, {"b": [1]}), WAIT, id="failed, lease out: wait"),
        pytest.param(
            View("a", F, stop_requested=True), Decision(stop="a"), id="failed, stop asked"
        ),
    ],
)
def test_decide(view: View, expected: Decision) -> None:
    assert decide(view) == expected


def test_next_model_is_fifo_across_models() -> None:
    assert next_model({"x": [7, 8], "y": [3], "z": []}) == "y"
    assert next_model({}) is None


# ---------------------------------------------------------------- properties


@dataclass
class Sim:
    """A world driven only by `decide`, as the scheduler drives it."""

    bound: int
    resident: str | None = None
    state: ModelState | None = None
    leases: dict[str, int] = field(default_factory=dict)
    waiters: list[tuple[str, int]] = field(default_factory=list)
    counted: int = 0
    stop_requested: bool = False
    ticket: int = 0
    granted: list[tuple[str, int]] = field(default_factory=list)
    overtaken: dict[tuple[int, int], int] = field(default_factory=dict)
    """(waiter ticket, resident period) -> grants to newer waiters of other models."""
    period: int = 0

    def view(self) -> View:
        queues: dict[str, list[int]] = {}
        for model, ticket in self.waiters:
            queues.setdefault(model, []).append(ticket)
        return View(
            self.resident,
            self.state,
            dict(self.leases),
            queues,
            self.counted,
            self.bound,
            self.stop_requested,
        )

    def pump(self) -> None:
        for _ in range(1000):
            if not any(m != self.resident for m, _ in self.waiters):
                self.counted = 0
            view = self.view()
            d = decide(view)
            assert sum(bool(x) for x in (d.grant, d.stop, d.start)) <= 1
            if d.is_wait:
                return
            if d.start:
                assert self.resident is None, "two models resident"
                assert d.start in view.waiters
                self.resident, self.state, self.counted = d.start, ModelState.STARTING, 0
                self.stop_requested = False
                self.period += 1
            elif d.stop:
                assert d.stop == self.resident
                assert self.leases.get(d.stop, 0) == 0, "stopped with a lease in flight"
                assert self.state in (ModelState.READY, ModelState.FAILED)
                self.state = ModelState.STOPPING
            else:
                assert self.state is ModelState.READY
                assert 0 <= d.counted <= d.grant
                mine = [w for w in self.waiters if w[0] == self.resident][: d.grant]
                assert len(mine) == d.grant
                for w in mine:
                    self.waiters.remove(w)
                    self.granted.append(w)
                    self.leases[w[0]] = self.leases.get(w[0], 0) + 1
                    for other_model, other_ticket in self.waiters:
                        if other_model != w[0] and other_ticket < w[1]:
                            key = (other_ticket, self.period)
                            self.overtaken[key] = self.overtaken.get(key, 0) + 1
                self.counted += d.counted
        raise AssertionError("the policy did not settle")

    def apply(self, op: tuple) -> None:
        kind = op[0]
        if kind == "arrive":
            self.waiters.append((op[1], self.ticket))
            self.ticket += 1
        elif kind == "release":
            held = sorted(m for m, n in self.leases.items() if n)
            if held:
                model = held[op[1] % len(held)]
                self.leases[model] -= 1
        elif kind == "started" and self.state is ModelState.STARTING:
            self.state = ModelState.READY if op[1] else ModelState.FAILED
            if not op[1]:  # a failed start fails the model's waiters
                self.waiters = [w for w in self.waiters if w[0] != self.resident]
        elif kind == "stopped" and self.state is ModelState.STOPPING:
            if op[1]:
                self.resident, self.state = None, None
            else:
                self.state = ModelState.FAILED
            self.stop_requested = False
        elif kind == "died" and self.state is ModelState.READY:
            self.state = ModelState.FAILED
        elif kind == "stop" and self.resident is not None:
            self.stop_requested = True
        self.pump()

    def drain(self) -> None:
        """No more arrivals: every server behaves, every client releases."""
        for _ in range(10_000):
            if not self.waiters:
                return
            for model in list(self.leases):
                self.leases[model] = 0
            if self.state is ModelState.STARTING:
                self.apply(("started", True))
            elif self.state is ModelState.STOPPING:
                self.apply(("stopped", True))
            else:
                self.pump()
        raise AssertionError(f"waiters never served: {self.waiters}")


MODELS = ["a", "b", "c"]
ops = st.one_of(
    st.tuples(st.just("arrive"), st.sampled_from(MODELS)),
    st.tuples(st.just("release"), st.integers(0, 5)),
    st.tuples(st.just("started"), st.booleans()),
    st.tuples(st.just("stopped"), st.booleans()),
    st.tuples(st.just("died")),
    st.tuples(st.just("stop")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=80), st.integers(1, 4))
def test_random_histories_keep_the_invariants(history: list[tuple], bound: int) -> None:
    sim = Sim(bound=bound)
    for op in history:
        sim.apply(op)  # pump() asserts: one resident, no stop with leases, grants only when ready
    assert all(n <= bound for n in sim.overtaken.values()), sim.overtaken
    sim.drain()
    assert not sim.waiters


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(MODELS), min_size=1, max_size=60), st.integers(1, 4))
def test_a_burst_is_served_fifo_within_the_bound(arrivals: list[str], bound: int) -> None:
    sim = Sim(bound=bound)
    for model in arrivals:
        sim.apply(("arrive", model))
    sim.drain()
    assert sorted(t for _, t in sim.granted) == list(range(len(arrivals)))
    assert all(n <= bound for n in sim.overtaken.values())
