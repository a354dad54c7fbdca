"""The fair share between keys in the proxy's job queue (docs/jobs.md, "Fair share
between keys"): `order.pick_owner` and `order.fair_position` as properties, and the
store's per-(model, owner) queues on the embedded store (Redis: the jobs tier)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.jobs.order import fair_position, pick_owner
from proxy.jobs.store import JobStore
from proxy.keys import CLASSES

owners = st.sampled_from(["a", "b", "c", "d", "e"])
queues = st.dictionaries(owners, st.integers(0, 12), max_size=5)
classes = st.dictionaries(owners, st.sampled_from(CLASSES), max_size=5)
counts = st.dictionaries(owners, st.integers(0, 4), max_size=5)


def drain(queued, classes, running, served, *, finishing=False):
    """The owners in the order workers would take their jobs if none came (and none
    finished, or with `finishing` each finished before the next pick)."""
    left, busy, turns = dict(queued), dict(running), dict(served)
    turn = max(turns.values(), default=0)
    out = []
    while (who := pick_owner(left, classes=classes, running=busy, served=turns)) is not None:
        out.append(who)
        left[who] -= 1
        if not finishing:
            busy[who] = busy.get(who, 0) + 1
        turn += 1
        turns[who] = turn
    return out


@settings(max_examples=300, deadline=None)
@given(queues, classes, counts, counts)
def test_the_pick_is_a_queued_owner_of_the_best_class(queued, cls, running, served) -> None:
    who = pick_owner(queued, classes=cls, running=running, served=served)
    have = [o for o, n in queued.items() if n > 0]
    if not have:
        assert who is None
        return
    assert who in have
    rank = {o: CLASSES.index(cls.get(o, "normal")) for o in have}
    assert rank[who] == min(rank.values())
    peers = [o for o in have if rank[o] == rank[who]]
    assert running.get(who, 0) == min(running.get(o, 0) for o in peers)


@settings(max_examples=300, deadline=None)
@given(queues, classes, counts, counts)
def test_draining_serves_every_class_in_turn_and_owners_of_one_class_round_robin(
    queued, cls, running, served
) -> None:
    order = drain(queued, cls, running, served)
    assert sorted(order) == sorted(o for o, n in queued.items() for _ in range(n))
    ranks = [CLASSES.index(cls.get(o, "normal")) for o in order]
    assert ranks == sorted(ranks), "a worse class never goes before a better one"
    # Within one class, once each owner's head start (jobs already running) is used up,
    # no owner gets two turns while another owner of its class still waits.
    for rank in set(ranks):
        peers = {o for o in queued if queued[o] and CLASSES.index(cls.get(o, "normal")) == rank}
        taken = {o: running.get(o, 0) for o in peers}
        for who in (o for o in order if o in peers):
            waiting = [o for o in peers if taken[o] - running.get(o, 0) < queued[o]]
            assert taken[who] == min(taken[o] for o in waiting)
            taken[who] += 1


@settings(max_examples=300, deadline=None)
@given(queues, classes, counts)
def test_when_jobs_finish_as_fast_as_they_start_owners_of_one_class_take_turns(
    queued, cls, served
) -> None:
    order = drain(queued, cls, {}, served, finishing=True)
    assert sorted(order) == sorted(o for o, n in queued.items() for _ in range(n))
    taken = dict.fromkeys(queued, 0)
    for who in order:
        rank = CLASSES.index(cls.get(who, "normal"))
        waiting = [
            o
            for o in queued
            if taken[o] < queued[o] and CLASSES.index(cls.get(o, "normal")) == rank
        ]
        assert taken[who] == min(taken[o] for o in waiting), "round robin within a class"
        taken[who] += 1


@settings(max_examples=200, deadline=None)
@given(queues, classes, counts, counts)
def test_positions_are_the_drain_order(queued, cls, running, served) -> None:
    order = drain(queued, cls, running, served)
    for owner, n in queued.items():
        mine = [i + 1 for i, o in enumerate(order) if o == owner]
        got = [
            fair_position(owner, k, queued, classes=cls, running=running, served=served)
            for k in range(1, n + 1)
        ]
        assert got == mine


def test_a_second_key_does_not_wait_behind_a_flood() -> None:
    queued = {"a": 200, "b": 5}
    running = {"a": 16}
    assert [
        fair_position("b", k, queued, classes={}, running=running, served={"a": 9})
        for k in range(1, 6)
    ] == [1, 2, 3, 4, 5]
    assert fair_position("a", 1, queued, classes={}, running=running, served={"a": 9}) == 6
    # A high-class key goes first whatever it ran; a low one after everyone else.
    cls = {"b": "low", "c": "high"}
    assert drain({"a": 2, "b": 2, "c": 2}, cls, {"c": 5}, {}) == ["c", "c", "a", "a", "b", "b"]


def test_store_keeps_one_fifo_per_model_and_owner_across_a_reopen(tmp_path) -> None:
    path = str(tmp_path / "jobs.db")
    store = JobStore(path)
    try:
        for i in range(3):
            store.enqueue("m", f"a{i}", "key-a")
        store.enqueue("m", "b0", "key-b")
        store.enqueue("m", "x0", "")  # a job stored before owners (or an open path)
        store.enqueue("n", "c0", "key-a")
        assert store.owner_sizes("m") == {"key-a": 3, "key-b": 1, "": 1}
        assert store.queue_sizes(["m", "n", "z"]) == {"m": 5, "n": 1}
        assert store.head("m", "key-a") == "a0" and store.queued("m", "key-b") == ["b0"]
        assert store.dequeue("m", "key-b") == "b0" and store.dequeue("m", "key-b") is None
    finally:
        store.close()
    again = JobStore(path)
    try:
        assert again.owners() == {"m": {"key-a", "key-b", ""}, "n": {"key-a"}}
        assert again.owner_sizes("m") == {"key-a": 3, "": 1}
        assert [again.dequeue("m", "key-a") for _ in range(4)] == ["a0", "a1", "a2", None]
    finally:
        again.close()


async def test_the_dispatcher_takes_classes_from_the_key_ring_and_recovers_per_owner(
    tmp_path,
) -> None:
    from types import SimpleNamespace

    from proxy.jobs.dispatcher import Dispatcher
    from proxy.jobs.records import Job
    from proxy.jobs.store import AsyncJobStore
    from proxy.keys import KeyRing, Principal, digest

    ring = KeyRing(
        {
            digest("k1"): Principal(name="key-a"),
            digest("k2"): Principal(name="vip", priority="high"),
        }
    )
    store = JobStore(str(tmp_path / "jobs.db"))
    try:
        jobs = Dispatcher(SimpleNamespace(ring=ring), AsyncJobStore(store))  # type: ignore[arg-type]
        submitted = [
            await jobs.submit(
                method="create_completion", model="m", endpoint="/v1/completions", body={}, owner=o
            )
            for o in ("key-a", "key-a", "vip")
        ]
        assert store.owner_sizes("m") == {"key-a": 2, "vip": 1}
        assert await jobs._choose_owner("m") == "vip"  # the high class first
        assert [await jobs._place(j) for j in submitted] == [2, 3, 1]
        # A pending job missing from its queue (a store written before per-key queues)
        # goes back into its key's queue at start-up.
        lost = Job(id="lost", method="m", model="m", endpoint="/v1/x", body={}, owner="key-a")
        store.put_job(lost)
        assert await jobs.recover(startup=True) == 1
        assert store.queued("m", "key-a") == [submitted[0].id, submitted[1].id, "lost"]
    finally:
        store.close()
