"""The pure placement decision: table tests for each rule, and properties over random
histories of several models with costs, priorities and pins under a memory capacity."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manager.policy import MAX_OVERTAKES, WAIT, Decision, ModelView, View, blocked, decide, head
from manager.state import ModelState

R, S, T, F, X = (
    ModelState.READY,
    ModelState.STARTING,
    ModelState.STOPPING,
    ModelState.FAILED,
    ModelState.STOPPED,
)


def mv(state: ModelState = X, **kw: object) -> ModelView:
    return ModelView(state=state, **kw)  # type: ignore[arg-type]


ALONE = {"a": mv(R), "b": mv()}


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        pytest.param(View(), WAIT, id="idle"),
        pytest.param(
            View({"a": mv(waiters=[5]), "b": mv(waiters=[2])}),
            Decision(start="b"),
            id="cold start: oldest",
        ),
        pytest.param(
            View({"b": mv(waiters=[2]), "a": mv(waiters=[2])}),
            Decision(start="a"),
            id="tie: smaller name",
        ),
        pytest.param(View({"a": mv()}), WAIT, id="no waiter"),
        pytest.param(
            View({"a": mv(S, waiters=[1]), "b": mv(waiters=[0])}), WAIT, id="starting: wait"
        ),
        pytest.param(View({"a": mv(T), "b": mv(waiters=[0])}), WAIT, id="stopping: wait"),
        pytest.param(
            View({"a": mv(R, waiters=[1, 2, 3])}, batch_bound=1),
            Decision(grant="a", count=3),
            id="no contention: grant all, none counted",
        ),
        pytest.param(
            View({"a": mv(R, waiters=[5, 11, 12, 13, 14]), "b": mv(waiters=[10])}, batch_bound=2),
            Decision(grant="a", count=3, counted=2),
            id="blocked: older ones plus the bound",
        ),
        pytest.param(
            View(
                {"a": mv(R, waiters=[5, 11, 12], granted_since_blocked=2), "b": mv(waiters=[10])},
                batch_bound=2,
            ),
            Decision(grant="a", count=1),
            id="bound used up: only the older ones",
        ),
        pytest.param(
            View(
                {
                    "a": mv(R, in_flight=1, waiters=[11], granted_since_blocked=2),
                    "b": mv(waiters=[10]),
                },
                batch_bound=2,
            ),
            WAIT,
            id="bound used up, lease in flight: wait",
        ),
        pytest.param(
            View(
                {"a": mv(R, waiters=[11], granted_since_blocked=2), "b": mv(waiters=[10])},
                batch_bound=2,
            ),
            Decision(stop="a"),
            id="bound used up, no lease: stop",
        ),
        pytest.param(
            View({"a": mv(R, in_flight=2), "b": mv(waiters=[1])}),
            WAIT,
            id="others wait, leases out",
        ),
        pytest.param(
            View({"a": mv(R), "b": mv(waiters=[1])}), Decision(stop="a"), id="others wait, idle"
        ),
        pytest.param(
            View({"a": mv(R, in_flight=1, stop_requested=True)}), WAIT, id="stop asked, lease out"
        ),
        pytest.param(View({"a": mv(R, stop_requested=True)}), Decision(stop="a"), id="stop asked"),
        pytest.param(
            View({"a": mv(R, waiters=[1], stop_requested=True)}),
            Decision(stop="a"),
            id="stop asked: no new grants",
        ),
        pytest.param(View({"a": mv(F)}), WAIT, id="failed, nobody waits: keep (logs)"),
        pytest.param(
            View({"a": mv(F, waiters=[1])}), Decision(stop="a"), id="failed: clean up to retry"
        ),
        pytest.param(
            View({"a": mv(F), "b": mv(waiters=[1])}),
            Decision(stop="a"),
            id="failed: clean up for next",
        ),
        pytest.param(
            View({"a": mv(F, in_flight=1), "b": mv(waiters=[1])}), WAIT, id="failed, lease out"
        ),
        pytest.param(
            View({"a": mv(F, stop_requested=True)}), Decision(stop="a"), id="failed, stop asked"
        ),
        # ---- with a budget
        pytest.param(
            View({"a": mv(R, cost=10), "b": mv(cost=8, waiters=[1])}, capacity=20),
            Decision(start="b"),
            id="budget: fits beside the resident",
        ),
        pytest.param(
            View({"a": mv(R, cost=10), "b": mv(waiters=[1])}, capacity=20),
            Decision(stop="a"),
            id="budget: undeclared runs alone",
        ),
        pytest.param(
            View(
                {
                    "a": mv(R, cost=8, last_used=5),
                    "b": mv(R, cost=8, last_used=3),
                    "c": mv(cost=8, waiters=[1]),
                },
                capacity=20,
            ),
            Decision(stop="b"),
            id="budget: least recently used goes",
        ),
        pytest.param(
            View(
                {
                    "a": mv(R, cost=8, last_used=3, priority=5),
                    "b": mv(R, cost=8, last_used=3),
                    "c": mv(cost=8, waiters=[1]),
                },
                capacity=20,
            ),
            Decision(stop="b"),
            id="budget: then the lowest priority",
        ),
        pytest.param(
            View(
                {
                    "a": mv(R, cost=8, last_used=1, pinned=True),
                    "b": mv(R, cost=8, last_used=3),
                    "c": mv(cost=8, waiters=[1]),
                },
                capacity=20,
            ),
            Decision(stop="b"),
            id="budget: never the pinned",
        ),
        pytest.param(
            View(
                {
                    "a": mv(R, cost=8, last_used=1, in_flight=1),
                    "b": mv(R, cost=4, last_used=3),
                    "c": mv(cost=16, waiters=[1]),
                },
                capacity=20,
            ),
            WAIT,
            id="budget: idle ones not enough: wait for leases",
        ),
        pytest.param(
            View(
                {
                    "a": mv(T, cost=8),
                    "b": mv(R, cost=8, last_used=0),
                    "c": mv(cost=8, waiters=[1]),
                },
                capacity=20,
            ),
            WAIT,
            id="budget: a stop under way is enough",
        ),
        pytest.param(
            View(
                {
                    "a": mv(R, cost=10, pinned=True, waiters=[5, 6, 7]),
                    "c": mv(cost=20, waiters=[1]),
                },
                capacity=20,
                batch_bound=1,
            ),
            Decision(grant="a", count=3),
            id="budget: a pinned resident is not held back",
        ),
        pytest.param(
            View(
                {"lo": mv(waiters=[1]), "hi": mv(waiters=[2], priority=5)},
                capacity=None,
            ),
            Decision(start="hi"),
            id="priority first",
        ),
        pytest.param(
            View(
                {"lo": mv(waiters=[1], overtaken=MAX_OVERTAKES), "hi": mv(waiters=[2], priority=5)}
            ),
            Decision(start="lo"),
            id="priority within the bound",
        ),
        pytest.param(
            View(
                {
                    "small": mv(cost=2, waiters=[2]),
                    "big": mv(cost=18, waiters=[1]),
                    "r": mv(R, cost=5),
                },
                capacity=20,
            ),
            Decision(stop="r"),
            id="only the head starts: the big one is not starved",
        ),
    ],
)
def test_decide(view: View, expected: Decision) -> None:
    assert decide(view) == expected


def test_head_and_blocked() -> None:
    view = View({"x": mv(waiters=[7, 8]), "y": mv(waiters=[3]), "z": mv()})
    assert head(view) == "y" and blocked(view) is None
    assert head(View()) is None
    busy = View({"a": mv(R, cost=15), "b": mv(cost=10, waiters=[1])}, capacity=20)
    assert blocked(busy) == "b"


def test_two_models_that_fit_alternate_without_a_stop() -> None:
    """Text, image, text, image...: with both declared within the budget, nothing stops."""
    models = {"text": mv(cost=10), "image": mv(cost=8)}
    stops = starts = 0
    for i in range(10):
        name = ("text", "image")[i % 2]
        models[name] = replace(models[name], waiters=[i])
        while (d := decide(View(models, capacity=20))) != WAIT:
            if d.start:
                models[d.start] = replace(models[d.start], state=R)
                starts += 1
            elif d.stop:
                stops += 1
                models[d.stop] = replace(models[d.stop], state=X)
            else:
                assert d.grant
                models[d.grant] = replace(models[d.grant], waiters=[])
    assert (starts, stops) == (2, 0)


# ---------------------------------------------------------------- properties


@dataclass
class Model:
    cost: int | None
    priority: int
    pinned: bool
    state: ModelState = X
    leases: int = 0
    last_used: int = 0
    counted: int = 0
    overtaken: int = 0
    stop_requested: bool = False


@dataclass
class Sim:
    """A world driven only by `decide`, as the scheduler drives it."""

    models: dict[str, Model]
    capacity: int | None
    bound: int
    waiters: list[tuple[str, int]] = field(default_factory=list)
    ticket: int = 0
    tick: int = 0
    blocker: str | None = None
    granted: list[tuple[str, int]] = field(default_factory=list)
    newer_grants: dict[tuple[str, int], int] = field(default_factory=dict)
    """(model, blocked episode) -> grants to waiters newer than the blocker's oldest."""
    episode: int = 0
    passed: dict[tuple[str, int], int] = field(default_factory=dict)
    """(model, its oldest waiter) -> starts of other models with newer oldest waiters."""

    def cost(self, m: Model) -> int:
        if self.capacity is None:
            return 1
        return self.capacity if m.cost is None else m.cost

    def used(self) -> int:
        return sum(self.cost(m) for m in self.models.values() if m.state is not X)

    def queues(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for model, ticket in self.waiters:
            out.setdefault(model, []).append(ticket)
        return out

    def view(self) -> View:
        q = self.queues()
        return View(
            {
                n: ModelView(
                    state=m.state,
                    cost=m.cost,
                    in_flight=m.leases,
                    waiters=q.get(n, []),
                    priority=m.priority,
                    pinned=m.pinned,
                    last_used=m.last_used,
                    stop_requested=m.stop_requested,
                    granted_since_blocked=m.counted,
                    overtaken=m.overtaken,
                )
                for n, m in self.models.items()
            },
            capacity=self.capacity,
            batch_bound=self.bound,
        )

    def pump(self) -> None:
        for _ in range(1000):
            view = self.view()
            now_blocked = blocked(view)
            if now_blocked is None and self.blocker is not None:
                for m in self.models.values():
                    m.counted = 0
            if now_blocked is not None and self.blocker is None:
                self.episode += 1
            self.blocker = now_blocked
            d = decide(view)
            assert sum(bool(x) for x in (d.grant, d.stop, d.start)) <= 1
            if d.is_wait:
                return
            if d.start:
                self.start(d.start, view)
            elif d.stop:
                m = self.models[d.stop]
                assert m.leases == 0, "stopped with a lease in flight"
                assert m.state in (R, F)
                if m.state is R and not m.stop_requested:
                    assert not m.pinned, "a pinned model was evicted"
                m.state = T
            else:
                assert d.grant is not None
                self.grant(d.grant, d.count, d.counted, view)
            assert self.used() <= (self.capacity or 1), "over the budget"
        raise AssertionError("the policy did not settle")

    def start(self, name: str, view: View) -> None:
        m = self.models[name]
        assert m.state is X and view.models[name].waiters
        first = view.models[name].waiters[0]
        for other, ov in view.models.items():
            if other != name and ov.waiters and ov.state is X and ov.waiters[0] < first:
                self.models[other].overtaken += 1
                key = (other, ov.waiters[0])
                self.passed[key] = self.passed.get(key, 0) + 1
        m.state, m.counted, m.overtaken, m.stop_requested = S, 0, 0, False

    def grant(self, name: str, count: int, counted: int, view: View) -> None:
        m = self.models[name]
        assert m.state is R and 0 <= counted <= count
        mine = [w for w in self.waiters if w[0] == name][:count]
        assert len(mine) == count
        for w in mine:
            self.waiters.remove(w)
            self.granted.append(w)
            m.leases += 1
            self.tick += 1
            m.last_used = self.tick
            if self.blocker is not None and not m.pinned:
                if w[1] > view.models[self.blocker].waiters[0]:
                    key = (name, self.episode)
                    self.newer_grants[key] = self.newer_grants.get(key, 0) + 1
        m.counted += counted

    def apply(self, op: tuple) -> None:
        kind = op[0]
        names = sorted(self.models)
        if kind == "arrive":
            self.waiters.append((names[op[1] % len(names)], self.ticket))
            self.ticket += 1
        elif kind == "release":
            held = [n for n in names if self.models[n].leases]
            if held:
                m = self.models[held[op[1] % len(held)]]
                m.leases -= 1
                self.tick += 1
                m.last_used = self.tick
        else:
            m = self.models[names[op[2] % len(names)]]
            if kind == "started" and m.state is S:
                m.state = R if op[1] else F
                if not op[1]:  # a failed start fails the model's waiters
                    name = names[op[2] % len(names)]
                    self.waiters = [w for w in self.waiters if w[0] != name]
            elif kind == "stopped" and m.state is T:
                m.state = X if op[1] else F
                m.stop_requested = False
            elif kind == "died" and m.state is R:
                m.state = F
            elif kind == "stop" and m.state is not X:
                m.stop_requested = True
        self.pump()

    def drain(self) -> None:
        """No more arrivals: every server behaves, every client releases."""
        for _ in range(10_000):
            if not self.waiters:
                return
            for m in self.models.values():
                m.leases = 0
                if m.state is S:
                    m.state = R
                elif m.state is T:
                    m.state, m.stop_requested = X, False
            self.pump()
        raise AssertionError(f"waiters never served: {self.waiters}")


model_st = st.builds(
    Model,
    cost=st.one_of(st.none(), st.integers(0, 12)),
    priority=st.integers(-2, 2),
    pinned=st.just(False),
)
ops = st.one_of(
    st.tuples(st.just("arrive"), st.integers(0, 5)),
    st.tuples(st.just("release"), st.integers(0, 5)),
    st.tuples(st.sampled_from(["started", "stopped"]), st.booleans(), st.integers(0, 5)),
    st.tuples(st.sampled_from(["died", "stop"]), st.just(True), st.integers(0, 5)),
)


@st.composite
def worlds(draw: st.DrawFn) -> Sim:
    capacity = draw(st.one_of(st.none(), st.integers(12, 24)))
    models = draw(st.lists(model_st, min_size=2, max_size=4))
    if capacity is not None and draw(st.booleans()):  # pin one that leaves room for the rest
        pin = models[0]
        biggest = max((capacity if m.cost is None else m.cost) for m in models[1:])
        room = capacity - biggest
        if room >= 0:
            pin.pinned, pin.cost = True, min(room, pin.cost or 0)
    names = {f"m{i}": m for i, m in enumerate(models)}
    return Sim(names, capacity, draw(st.integers(1, 4)))


@settings(max_examples=300, deadline=None)
@given(worlds(), st.lists(ops, max_size=80))
def test_random_histories_keep_the_invariants(sim: Sim, history: list[tuple]) -> None:
    for op in history:
        sim.apply(op)  # pump() asserts: within budget, no stop with leases, pins kept
    assert all(n <= sim.bound for n in sim.newer_grants.values()), sim.newer_grants
    limit = MAX_OVERTAKES + len(sim.models) - 1
    assert all(n <= limit for n in sim.passed.values()), sim.passed
    sim.drain()
    assert not sim.waiters


@settings(max_examples=200, deadline=None)
@given(worlds(), st.lists(st.integers(0, 5), min_size=1, max_size=60))
def test_a_burst_is_served_within_the_bounds(sim: Sim, arrivals: list[int]) -> None:
    for i in arrivals:
        sim.apply(("arrive", i))
    sim.drain()
    assert sorted(t for _, t in sim.granted) == list(range(len(arrivals)))
    assert all(n <= sim.bound for n in sim.newer_grants.values())
    limit = MAX_OVERTAKES + len(sim.models) - 1
    assert all(n <= limit for n in sim.passed.values()), sim.passed
