"""The fair share of the GPU between API keys (docs/architecture.md, "Fair share").

The pure policy's fair order (`manager.policy`: `Share`, `grants`, `head`) as property
tests over random queues, a simulation of a flood against a trickle, the decayed usage
(`manager.fairshare.Usage`), and the scheduler's part: names and classes in, hold time
charged, room contention between keys published and the leases then one per request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from manager_fakes import FakeClock, FakeProbe, FakeRuntime, catalogue, until

from manager.fairshare import Usage
from manager.metrics import render
from manager.policy import (
    MAX_WAITER_OVERTAKES,
    ModelView,
    Share,
    View,
    decide,
    grants,
    head,
)
from manager.scheduler import Scheduler, SchedulerConfig
from manager.state import ModelState
from wire.events import ContentionEvent
from wire.lease import CLASS_RANK, LeaseRequest

R, X = ModelState.READY, ModelState.STOPPED


def fair_key(m: ModelView, i: int) -> tuple:
    """The order the issue asks for, written independently of the policy's."""
    s = m.share(i)
    if s.overtaken >= MAX_WAITER_OVERTAKES:
        return (0, 0, 0.0, m.waiters[i])
    return (1, s.rank, s.used, m.waiters[i])


shares = st.builds(
    Share,
    rank=st.integers(0, 2),
    used=st.sampled_from([0.0, 1.0, 2.5, 10.0, 100.0]),
    overtaken=st.integers(0, MAX_WAITER_OVERTAKES + 2),
)


@st.composite
def queues(draw: st.DrawFn) -> tuple[ModelView, float | None, int]:
    n = draw(st.integers(1, 12))
    waiters = sorted(draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n, unique=True)))
    m = ModelView(
        state=R,
        waiters=waiters,
        shares=draw(st.lists(shares, min_size=n, max_size=n)),
        room=draw(st.one_of(st.none(), st.integers(0, 12))),
        granted_since_blocked=draw(st.integers(0, 3)),
    )
    blocker_first = draw(st.one_of(st.none(), st.integers(-1, 1001)))
    return m, blocker_first, draw(st.integers(1, 4))


@settings(max_examples=500, deadline=None)
@given(queues())
def test_the_fair_order_holds_within_the_room_and_the_anti_thrash_bound(case) -> None:
    m, blocker_first, bound = case
    models = {"m": m}
    if blocker_first is not None:
        models["big"] = ModelView(state=X, waiters=[blocker_first])
    view = View(models, capacity=None, batch_bound=bound)
    picks, counted = grants(view, "m", "big" if blocker_first is not None else None)
    assert len(set(picks)) == len(picks)
    if m.room is not None:
        assert len(picks) <= m.room, "never more than the room"
    left = [i for i in range(len(m.waiters)) if i not in picks]
    assert list(picks) == sorted(picks, key=lambda i: fair_key(m, i)), "granted in fair order"
    if blocker_first is None:
        # Nobody left waiting goes before anybody granted: no key with fewer recent
        # GPU-seconds in the same class waits behind one with more, a better class first.
        if left and picks:
            assert min(fair_key(m, i) for i in left) > max(fair_key(m, i) for i in picks)
        if m.room is None:
            assert not left
        return
    newer = {i for i, t in enumerate(m.waiters) if t > blocker_first}
    allowance = max(0, bound - m.granted_since_blocked)
    assert counted == sum(1 for i in picks if i in newer) <= allowance, "anti-thrash bound"
    granted_newer = [i for i in picks if i in newer]
    left_newer = [i for i in left if i in newer]
    if granted_newer and left_newer:
        assert min(fair_key(m, i) for i in left_newer) > max(fair_key(m, i) for i in granted_newer)
    if m.room is None:
        assert all(i in picks for i in range(len(m.waiters)) if i not in newer), (
            "the ones that queued before the blocked model are all served"
        )


def test_a_better_class_goes_first_then_less_recent_gpu_time_then_age() -> None:
    m = ModelView(
        state=R,
        waiters=[1, 2, 3, 4],
        shares=[Share(2, 0.0), Share(1, 50.0), Share(1, 5.0), Share(0, 999.0)],
        room=4,
    )
    assert m.fair_order() == [3, 2, 1, 0]
    assert ModelView(state=R, waiters=[1, 2], room=4).fair_order() == [0, 1], "no shares: FIFO"


def test_a_waiter_overtaken_too_often_goes_first() -> None:
    m = ModelView(
        state=R,
        waiters=[1, 2],
        shares=[Share(2, 1e9, overtaken=MAX_WAITER_OVERTAKES), Share(0, 0.0)],
        room=1,
    )
    picks, _ = grants(View({"m": m}), "m", None)
    assert picks == (0,)


def test_the_head_is_chosen_by_class_then_model_priority_then_recent_gpu_time() -> None:
    def view(a: ModelView, b: ModelView) -> View:
        return View({"a": a, "b": b}, capacity=None)

    # The better class goes first whatever the model's priority.
    assert (
        head(
            view(
                ModelView(waiters=[1], priority=5, shares=[Share(1, 0.0)]),
                ModelView(waiters=[2], priority=0, shares=[Share(0, 100.0)]),
            )
        )
        == "b"
    )
    # Same class: the model's priority, then the key that used less.
    assert (
        head(
            view(
                ModelView(waiters=[1], priority=5, shares=[Share(1, 100.0)]),
                ModelView(waiters=[2], priority=0, shares=[Share(1, 0.0)]),
            )
        )
        == "a"
    )
    assert (
        head(
            view(
                ModelView(waiters=[1], shares=[Share(1, 100.0)]),
                ModelView(waiters=[2], shares=[Share(1, 0.0)]),
            )
        )
        == "b"
    )


# --------------------------------------------------------------------- a simulation


@dataclass
class Flood:
    """One ready model with room for `room` requests; keys' requests arrive, are granted
    by `decide` in fair order, hold the model for one step each, and are charged; each
    waiting key counts the newer requests of other keys granted since its last grant, as
    the scheduler counts them (given to its oldest waiter's `Share`)."""

    classes: dict[str, int]
    room: int = 1
    fair: bool = True
    ticket: int = 0
    queue: list[tuple[int, str]] = field(default_factory=list)
    overtaken: dict[str, int] = field(default_factory=dict)
    most_overtaken: int = 0
    used: dict[str, float] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)
    served: list[tuple[int, str]] = field(default_factory=list)

    def arrive(self, key: str) -> int:
        self.queue.append((self.ticket, key))
        self.ticket += 1
        return self.ticket - 1

    def view(self) -> View:
        share, seen = [], set()
        for _, k in self.queue:
            over = 0 if k in seen else self.overtaken.get(k, 0)
            seen.add(k)
            share.append(Share(self.classes[k], self.used.get(k, 0.0), over))
        m = ModelView(
            state=R,
            waiters=[t for t, _ in self.queue],
            shares=share if self.fair else (),
            room=self.room - len(self.held),
            in_flight=len(self.held),
        )
        return View({"m": m})

    def step(self) -> None:
        """Grant what the policy grants, then the oldest holder finishes."""
        d = decide(self.view())
        if d.grant:
            chosen = [self.queue[i] for i in d.picks]
            for w in chosen:
                self.queue.remove(w)
                self.served.append(w)
                self.held.append(w[1])
            granted = {k for _, k in chosen}
            oldest: dict[str, int] = {}
            for t, k in self.queue:
                oldest.setdefault(k, t)
            for k in list(self.overtaken):
                if k in granted or k not in oldest:
                    del self.overtaken[k]
            for k, t in oldest.items():
                if k not in granted:
                    self.overtaken[k] = self.overtaken.get(k, 0) + sum(
                        1 for c, _ in chosen if c > t
                    )
                    self.most_overtaken = max(self.most_overtaken, self.overtaken[k])
        if self.held:
            key = self.held.pop(0)
            self.used[key] = self.used.get(key, 0.0) + 1.0


def _b_waits(fair: bool) -> list[int]:
    """A queues 1000 requests; B's chats arrive one at a time among them: how many other
    grants each of B's 20 waited behind."""
    sim = Flood({"A": 1, "B": 1}, room=1, fair=fair)
    for _ in range(1000):
        sim.arrive("A")
    waits = []
    for _ in range(20):
        mine = sim.arrive("B")
        before = len(sim.served)
        while mine not in [t for t, _ in sim.served]:
            sim.step()
        waits.append(len(sim.served) - before - 1)
        for _ in range(5):
            sim.step()
    return waits


def test_a_flood_of_one_key_does_not_starve_another_keys_chat() -> None:
    """Each of B's chats is served within two grants (the one in flight and one more),
    not behind the flood."""
    assert max(_b_waits(fair=True)) <= 1


def test_without_the_fair_order_the_chat_waits_behind_the_flood() -> None:
    """The same run first come, first served (the order before the fair share): B waits
    behind A's whole backlog, so the test above can fail."""
    assert _b_waits(fair=False)[0] == 1000  # the first chat waits for every one of A's


keys_st = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 2), min_size=1, max_size=4
)


@settings(max_examples=200, deadline=None)
@given(keys_st, st.integers(1, 3), st.lists(st.integers(0, 3), max_size=150), st.data())
def test_nothing_starves(classes, room, arrivals, data) -> None:
    """Whatever the classes and the arrivals, every request is served, and a waiting key
    lets at most MAX_WAITER_OVERTAKES newer requests of other keys (plus one batch: the
    room) go before its next grant."""
    sim = Flood(classes, room=room)
    names = sorted(classes)
    for i in arrivals:
        sim.arrive(names[i % len(names)])
        if data.draw(st.booleans()):
            sim.step()
    for _ in range(10 * len(arrivals) + 10):
        if not sim.queue:
            break
        sim.step()
    assert not sim.queue, "every request is served once arrivals stop"
    assert sim.most_overtaken <= MAX_WAITER_OVERTAKES + room - 1 + len(classes) - 1


def test_a_low_class_yields_to_a_high_class_only_up_to_the_bound() -> None:
    """A strict class order alone would let a low-class request wait behind every
    high-class one; the overtaken rule serves it after MAX_WAITER_OVERTAKES."""
    sim = Flood({"hi": 0, "lo": 2}, room=1)
    low = sim.arrive("lo")
    for _ in range(100):
        sim.arrive("hi")
        sim.step()
    order = [t for t, _ in sim.served]
    assert low in order
    newer_first = sum(1 for u in order[: order.index(low)] if u > low)
    assert MAX_WAITER_OVERTAKES - 1 <= newer_first <= MAX_WAITER_OVERTAKES + 1, (
        "a low class yields to a high class, up to the bound and no further"
    )


# --------------------------------------------------------------------- decayed usage


def test_usage_halves_every_half_life_and_forgets() -> None:
    clock = FakeClock()
    usage = Usage(60.0, clock)
    usage.charge("a", 10.0)
    assert usage.used("a") == pytest.approx(10.0)
    clock.advance(60)
    assert usage.used("a") == pytest.approx(5.0)
    usage.charge("a", 5.0)
    assert usage.used("a") == pytest.approx(10.0)
    clock.advance(60 * 20)
    assert usage.snapshot() == {}
    assert usage.used("nobody") == 0.0
    with pytest.raises(ValueError):
        Usage(0, clock)


def test_the_wire_classes_are_the_proxys() -> None:
    from proxy.keys import CLASSES

    assert tuple(CLASS_RANK) == CLASSES
    assert LeaseRequest.model_validate({"model": "m"}).key_name == ""
    assert LeaseRequest.model_validate({"model": "m"}).key_class == "normal"
    with pytest.raises(ValueError):
        LeaseRequest.model_validate({"model": "m", "key_class": "urgent"})


# --------------------------------------------------------------------- the scheduler


ROOMY = {
    "solo": {
        "type": "image",
        "container": "t-solo",
        "port": 18009,
        "image": "homelab-ai/imageserver:0.1.0",
        "model": "org/solo",
        "sizes": ["512x512"],
        "max_in_flight": 1,
    }
}


@pytest.fixture
async def solo():
    clock = FakeClock()
    config = SchedulerConfig(queue_limit=64, queue_timeout=300, batch_bound=3, lease_ttl=120)
    scheduler = Scheduler(catalogue(ROOMY), FakeRuntime(), FakeProbe(), config, clock=clock)
    yield scheduler, clock
    await scheduler.close()


async def test_the_key_that_used_less_is_granted_first_and_hold_time_is_charged(solo) -> None:
    sched, clock = solo
    first = await sched.acquire("solo", key_name="A")
    assert (first.max_uses, first.key_name) == (0, "A"), "one key alone: shared"
    flood = [
        asyncio.create_task(sched.acquire("solo", key_name="A", key_class="normal"))
        for _ in range(10)
    ]
    await until(lambda: sched.model_status("solo").waiting == 10, "A's flood to queue")
    assert not sched.contended("solo"), "one key alone keeps its shared lease"
    sub = sched.events.subscribe()
    chat = asyncio.create_task(sched.acquire("solo", key_name="B"))
    await until(lambda: sched.model_status("solo").waiting == 11, "B to queue")
    assert sched.contended("solo"), "another key waits for the room"
    event = await sub.next(timeout=0)
    assert isinstance(event, ContentionEvent) and event.models == ["solo"]
    clock.advance(30)
    sched.release(first.lease_id)
    await until(lambda: chat.done() or any(t.done() for t in flood), "the next grant")
    assert chat.done(), "B used less than A: it goes before A's older requests"
    assert not any(t.done() for t in flood)
    lease = chat.result()
    assert (lease.max_uses, lease.max_concurrent) == (1, 1), "others still wait: one request"
    assert sched.usage.used("A") == pytest.approx(30.0)
    text = render(sched).decode()
    assert 'homelab_manager_waiting{key="A",key_class="normal",model="solo"} 10.0' in text
    assert 'homelab_manager_leases{key="B",key_class="normal",model="solo"} 1.0' in text
    assert 'homelab_manager_key_gpu_seconds{key="A"} 30.0' in text
    clock.advance(1)
    sched.release(lease.lease_id)
    assert sched.usage.used("B") == pytest.approx(1.0)
    for task in flood:
        got = await task
        assert got.key_name == "A"
        sched.release(got.lease_id)
    assert not sched.contended("solo")
    sub.close()


async def test_a_higher_class_goes_before_less_recent_gpu_time(solo) -> None:
    sched, clock = solo
    first = await sched.acquire("solo", key_name="B")
    clock.advance(100)
    sched.release(first.lease_id)
    held = await sched.acquire("solo", key_name="A")
    low = asyncio.create_task(sched.acquire("solo", key_name="A", key_class="low"))
    await until(lambda: sched.model_status("solo").waiting == 1, "low to queue")
    high = asyncio.create_task(sched.acquire("solo", key_name="B", key_class="high"))
    await until(lambda: sched.model_status("solo").waiting == 2, "high to queue")
    sched.release(held.lease_id)
    await until(lambda: high.done() or low.done(), "the next grant")
    assert high.done() and not low.done(), "B used 100 s but its class is high"
    sched.release(high.result().lease_id)
    sched.release((await low).lease_id)
