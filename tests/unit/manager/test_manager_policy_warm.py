"""The warm tier's policy: table tests for the cost rule, and properties over random
histories of warm and cold models under a GPU and a host-memory budget: never over either
budget, never a sleep (or stop) with a lease in flight, every waiter served in the end."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manager.policy import WAIT, Decision, ModelView, View, decide, warm_value
from manager.state import ModelState

R, S, T, F, X = (
    ModelState.READY,
    ModelState.STARTING,
    ModelState.STOPPING,
    ModelState.FAILED,
    ModelState.STOPPED,
)
A, Z, W = ModelState.FALLING_ASLEEP, ModelState.SLEEPING, ModelState.WAKING


def warm(state: ModelState = R, **kw: object) -> ModelView:
    base: dict[str, object] = {"cost": 10, "warm": True, "host_cost": 8, "load_s": 60, "wake_s": 1}
    base.update(kw)
    return ModelView(state=state, **base)  # type: ignore[arg-type]


def cold(state: ModelState = X, **kw: object) -> ModelView:
    return ModelView(state=state, cost=10, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        pytest.param(
            View({"a": warm(), "b": cold(waiters=[1])}, capacity=10, host_capacity=16),
            Decision(sleep="a"),
            id="room: the idle warm model sleeps",
        ),
        pytest.param(
            View({"a": warm(), "b": cold(waiters=[1])}, capacity=10),
            Decision(stop="a"),
            id="no host budget: stopped",
        ),
        pytest.param(
            View({"a": warm(host_cost=20), "b": cold(waiters=[1])}, capacity=10, host_capacity=16),
            Decision(stop="a"),
            id="too big to keep warm: stopped",
        ),
        pytest.param(
            View({"a": warm(load_s=1.5), "b": cold(waiters=[1])}, capacity=10, host_capacity=16),
            Decision(stop="a"),
            id="cheap to cold-start: stopped",
        ),
        pytest.param(
            View({"a": warm(in_flight=1), "b": cold(waiters=[1])}, capacity=10, host_capacity=16),
            WAIT,
            id="a lease in flight: neither sleep nor stop",
        ),
        pytest.param(
            View(
                {"a": warm(Z, gpu_free=True, host_held=True, waiters=[1])},
                capacity=10,
                host_capacity=16,
            ),
            Decision(wake="a"),
            id="a sleeping head that fits wakes",
        ),
        pytest.param(
            View(
                {
                    "a": warm(Z, gpu_free=True, host_held=True, waiters=[1]),
                    "b": cold(R),
                },
                capacity=10,
                host_capacity=16,
            ),
            Decision(stop="b"),
            id="a sleeping head makes room like a cold one",
        ),
        pytest.param(
            View(
                {
                    "a": warm(),
                    "s": warm(Z, gpu_free=True, host_held=True, load_s=5),
                    "b": cold(waiters=[1]),
                },
                capacity=10,
                host_capacity=8,
            ),
            Decision(stop="s"),
            id="a sleeper worth less gives up its host memory",
        ),
        pytest.param(
            View(
                {
                    "a": warm(load_s=5),
                    "s": warm(Z, gpu_free=True, host_held=True),
                    "b": cold(waiters=[1]),
                },
                capacity=10,
                host_capacity=8,
            ),
            Decision(stop="a"),
            id="a sleeper worth more keeps it",
        ),
        pytest.param(
            View(
                {"a": warm(), "s": warm(T, gpu_free=True, host_held=True), "b": cold(waiters=[1])},
                capacity=10,
                host_capacity=8,
            ),
            WAIT,
            id="wait for a stopping sleeper's host memory",
        ),
        pytest.param(
            View({"a": warm(Z, gpu_free=True, host_held=True, stop_requested=True)}),
            Decision(stop="a"),
            id="an explicit stop of a sleeper",
        ),
    ],
)
def test_decisions(view: View, expected: Decision) -> None:
    assert decide(view) == expected


def test_a_recently_used_model_is_worth_more() -> None:
    view = View(
        {"old": warm(last_used=0.0), "new": warm(last_used=1000.0)}, host_capacity=16, now=1000.0
    )
    assert warm_value(view, "new") > warm_value(view, "old") > 0


# ------------------------------------------------------------------ properties


@dataclass
class Model:
    cost: int
    warm: bool
    host: int | None
    load_s: float
    wake_s: float
    state: ModelState = X
    leases: int = 0
    last_used: float = 0.0
    gpu_free: bool = False
    host_held: bool = False
    stop_requested: bool = False


@dataclass
class Sim:
    models: dict[str, Model]
    capacity: int
    host_capacity: int | None
    waiters: list[tuple[str, int]] = field(default_factory=list)
    ticket: int = 0
    tick: float = 0.0

    def view(self) -> View:
        return View(
            models={
                name: ModelView(
                    state=m.state,
                    cost=m.cost,
                    in_flight=m.leases,
                    waiters=[t for n, t in self.waiters if n == name],
                    last_used=m.last_used,
                    stop_requested=m.stop_requested,
                    warm=m.warm,
                    host_cost=m.host,
                    gpu_free=m.gpu_free,
                    host_held=m.host_held,
                    load_s=m.load_s,
                    wake_s=m.wake_s,
                )
                for name, m in self.models.items()
            },
            capacity=self.capacity,
            batch_bound=2,
            host_capacity=self.host_capacity,
            now=self.tick,
        )

    def gpu_used(self) -> int:
        return sum(m.cost for m in self.models.values() if m.state.on_gpu and not m.gpu_free)

    def host_used(self) -> int:
        cap = self.host_capacity or 0
        return sum((cap if m.host is None else m.host) for m in self.models.values() if m.host_held)

    def pump(self) -> None:
        for _ in range(1000):
            d = decide(self.view())
            assert sum(bool(x) for x in (d.grant, d.stop, d.start, d.sleep, d.wake)) <= 1
            if d.is_wait:
                return
            if d.start:
                m = self.models[d.start]
                assert m.state is X
                m.state, m.stop_requested = S, False
            elif d.wake:
                m = self.models[d.wake]
                assert m.state is Z and m.gpu_free and m.host_held
                m.state, m.gpu_free, m.stop_requested = W, False, False
            elif d.sleep:
                m = self.models[d.sleep]
                assert m.leases == 0, "put to sleep with a lease in flight"
                assert m.state is R and m.warm
                m.state, m.host_held = A, True
            elif d.stop:
                m = self.models[d.stop]
                assert m.leases == 0, "stopped with a lease in flight"
                assert m.state in (R, F, Z)
                m.state = T
            else:
                assert d.grant is not None
                m = self.models[d.grant]
                assert m.state is R
                mine = [w for w in self.waiters if w[0] == d.grant][: d.count]
                for w in mine:
                    self.waiters.remove(w)
                    m.leases += 1
                    self.tick += 1
                    m.last_used = self.tick
            assert self.gpu_used() <= self.capacity, "over the GPU budget"
            assert self.host_used() <= (self.host_capacity or 0), "over the host budget"
        raise AssertionError("the policy did not settle")

    def apply(self, op: tuple) -> None:
        kind, ok, i = op
        names = sorted(self.models)
        m = self.models[names[i % len(names)]]
        if kind == "arrive":
            self.waiters.append((names[i % len(names)], self.ticket))
            self.ticket += 1
        elif kind == "release" and m.leases:
            m.leases -= 1
            self.tick += 1
            m.last_used = self.tick
        elif kind == "done":
            if m.state is S:
                m.state = R if ok else F
                if not ok:
                    self.waiters = [w for w in self.waiters if w[0] != names[i % len(names)]]
            elif m.state is A:
                if ok:
                    m.state, m.gpu_free = Z, True
                else:
                    m.state = F
            elif m.state is W:
                if ok:
                    m.state, m.host_held = R, False
                else:
                    m.state = F  # its waiters stay: the policy cold-starts it
            elif m.state is T:
                m.state = X if ok else F
                if ok:
                    m.gpu_free = m.host_held = False
                m.stop_requested = False
        elif kind == "died":
            if m.state is R:
                m.state = F
            elif m.state is Z:
                m.state, m.host_held = F, False
        elif kind == "stop" and m.state is not X:
            m.stop_requested = True
        self.pump()

    def drain(self) -> None:
        for _ in range(10_000):
            if not self.waiters:
                return
            for m in self.models.values():
                m.leases = 0
                if m.state is S or m.state is W:
                    m.state = R
                    m.host_held = False
                elif m.state is A:
                    m.state, m.gpu_free = Z, True
                elif m.state is T:
                    m.state, m.stop_requested = X, False
                    m.gpu_free = m.host_held = False
            self.pump()
        raise AssertionError(f"waiters never served: {self.waiters}")


model_st = st.builds(
    Model,
    cost=st.integers(1, 10),
    warm=st.booleans(),
    host=st.one_of(st.none(), st.integers(0, 12)),
    load_s=st.sampled_from([0.5, 5.0, 60.0]),
    wake_s=st.sampled_from([0.2, 2.0, 10.0]),
)
ops = st.tuples(
    st.sampled_from(["arrive", "arrive", "release", "done", "done", "died", "stop"]),
    st.booleans(),
    st.integers(0, 5),
)


@st.composite
def worlds(draw: st.DrawFn) -> Sim:
    models = draw(st.lists(model_st, min_size=2, max_size=5))
    host = draw(st.one_of(st.none(), st.integers(4, 24)))
    return Sim({f"m{i}": m for i, m in enumerate(models)}, 10, host)


@settings(max_examples=300, deadline=None)
@given(worlds(), st.lists(ops, max_size=100))
def test_random_histories_stay_within_both_budgets(sim: Sim, history: list[tuple]) -> None:
    for op in history:
        sim.apply(op)  # pump() asserts both budgets and no sleep or stop with a lease
    sim.drain()
    assert not sim.waiters
