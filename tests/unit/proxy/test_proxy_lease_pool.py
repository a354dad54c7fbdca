"""The lease pool (proxy/lease_pool.py) over the real `ManagerClient`, against the
fake manager served on loopback: sharing, the max_uses and max_concurrent caps,
unbounded leases, linger, contention (event and renewal), lost leases, cancellation
and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from proxy_fakes import TOKEN, FakeManager, serve_asgi

from proxy.errors import ManagerRefused, ManagerUnavailable
from proxy.lease_pool import LeasePool
from proxy.manager_client import ManagerClient

MODELS = {"chat-a": {"type": "text"}, "chat-b": {"type": "text"}}


@dataclass
class Pooled:
    manager: FakeManager
    pool: LeasePool


@contextlib.asynccontextmanager
async def pooled(
    linger: float = 5.0,
    ttl: float = 60.0,
    swap_delay: float = 0.0,
    max_uses: int | None = 8,
    max_concurrent: int | None = 8,
) -> AsyncIterator[Pooled]:
    fake = FakeManager(MODELS, "http://127.0.0.1:9", swap_delay=swap_delay, ttl=ttl)
    fake.max_uses = max_uses
    fake.max_concurrent = max_concurrent
    async with serve_asgi(fake.app) as url, aiohttp.ClientSession() as session:
        pool = LeasePool(ManagerClient(url, TOKEN, session), linger=linger)
        try:
            yield Pooled(fake, pool)
        finally:
            await pool.close()


async def eventually(predicate, what: str, tries: int = 500) -> None:
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_concurrent_requests_share_one_lease() -> None:
    async with pooled() as p:
        first = await p.pool.acquire("chat-a")
        assert first.lease.max_uses == 8
        others = await asyncio.gather(*(p.pool.acquire("chat-a") for _ in range(5)))
        assert {u.lease.lease_id for u in others} == {first.lease.lease_id}
        assert p.manager.granted == 1
        for use in [first, *others]:
            use.end()
        assert p.manager.released == [], "lingering, not released yet"


async def test_a_lease_admits_at_most_max_uses_requests() -> None:
    async with pooled(max_uses=3) as p:
        uses = [await p.pool.acquire("chat-a") for _ in range(7)]
        by_lease: dict[str, int] = {}
        for use in uses:
            by_lease[use.lease.lease_id] = by_lease.get(use.lease.lease_id, 0) + 1
        assert sorted(by_lease.values()) == [1, 3, 3]
        assert p.manager.granted == 3
        full = uses[0].lease.lease_id
        for use in uses[:3]:
            use.end()
        # A lease that reached max_uses is released as soon as it drains (no linger).
        await eventually(lambda: full in p.manager.released, "the full lease released")
        for use in uses[3:]:
            use.end()


async def test_concurrent_first_requests_ride_on_one_grant_when_the_model_allows_it() -> None:
    async with pooled(max_uses=4) as p:
        (await p.pool.acquire("chat-a")).end()  # learns max_uses=4 for chat-a
        p.manager.leases.clear()  # that lease is gone at the manager: ...
        p.pool.retire_model("chat-a")  # ... and retired here
        uses = await asyncio.gather(*(p.pool.acquire("chat-a") for _ in range(8)))
        assert len({u.lease.lease_id for u in uses}) == 2
        assert p.manager.granted == 3
        for use in uses:
            use.end()


async def test_the_last_request_out_releases_after_the_linger() -> None:
    async with pooled(linger=0.3) as p:
        use = await p.pool.acquire("chat-a")
        lease_id = use.lease.lease_id
        use.end()
        again = await p.pool.acquire("chat-a")  # within the linger: joins
        assert again.lease.lease_id == lease_id and p.manager.granted == 1
        again.end()
        assert lease_id in p.manager.leases
        await eventually(lambda: p.manager.released == [lease_id], "released after the linger")
        assert p.pool.stats() == {"leases": 0, "asks": 0}
        fresh = await p.pool.acquire("chat-a")
        assert fresh.lease.lease_id != lease_id and p.manager.granted == 2
        fresh.end()


async def test_linger_0_releases_at_once_and_the_next_request_gets_a_new_lease() -> None:
    async with pooled(linger=0) as p:
        use = await p.pool.acquire("chat-a")
        use.end()
        await eventually(lambda: p.manager.released == [use.lease.lease_id], "released")
        nxt = await p.pool.acquire("chat-a")
        assert nxt.lease.lease_id != use.lease.lease_id
        assert p.manager.granted == 2
        nxt.end()


async def test_under_contention_every_request_has_its_own_lease() -> None:
    async with pooled(max_uses=1) as p:  # the manager answers 1 while another model waits
        one = await p.pool.acquire("chat-a")
        two = await p.pool.acquire("chat-a")
        many = await asyncio.gather(*(p.pool.acquire("chat-a") for _ in range(4)))
        ids = {u.lease.lease_id for u in [one, two, *many]}
        assert len(ids) == 6 and p.manager.granted == 6
        for use in [one, two, *many]:
            use.end()
        await eventually(lambda: len(p.manager.released) == 6, "each released when it ends")


async def test_a_manager_without_max_uses_is_not_shared() -> None:
    async with pooled(max_uses=None) as p:
        one = await p.pool.acquire("chat-a")
        two = await p.pool.acquire("chat-a")
        assert one.lease.max_uses == 1 and one.lease.lease_id != two.lease.lease_id
        one.end()
        two.end()


async def test_each_model_has_its_own_lease() -> None:
    async with pooled() as p:
        a = await p.pool.acquire("chat-a")
        b = await p.pool.acquire("chat-b")
        assert (a.lease.model, b.lease.model) == ("chat-a", "chat-b")
        assert p.manager.granted == 2
        a.end()
        b.end()


async def test_a_lease_the_manager_forgot_is_replaced_and_not_released() -> None:
    async with pooled(ttl=0.2) as p:
        use = await p.pool.acquire("chat-a")
        lost = use.lease.lease_id
        del p.manager.leases[lost]  # expired at the manager: the next renewal answers 404
        await eventually(lambda: "chat-a" not in p.pool._open, "lease retired")
        fresh = await p.pool.acquire("chat-a")
        assert fresh.lease.lease_id != lost and p.manager.granted == 2
        use.end()
        fresh.end()
        await p.pool.close()
        assert lost not in p.manager.released
        assert p.manager.released == [fresh.lease.lease_id]


async def test_one_renewal_loop_per_shared_lease_and_it_stops_with_the_lease() -> None:
    async with pooled(ttl=0.2, linger=0) as p:
        uses = await asyncio.gather(*(p.pool.acquire("chat-a") for _ in range(1)))
        uses += [await p.pool.acquire("chat-a") for _ in range(3)]
        assert p.manager.granted == 1
        # One loop: it waits for its renewal's answer before the next. Hold the answers:
        # one renewal is then in flight, however long we wait; a loop per request (four)
        # would have four in flight after their first ttl/2 (0.1 s).
        gate = p.manager.renew_gate = asyncio.Event()
        try:
            await eventually(lambda: p.manager.renewing >= 1, "a renewal sent")
            await asyncio.sleep(0.5)  # five renewal periods
            assert p.manager.renewing == 1, f"{p.manager.renewing} renewals in flight at once"
        finally:
            gate.set()
        await eventually(lambda: len(p.manager.renewed) >= 3, "renewed")
        assert set(p.manager.renewed) == {uses[0].lease.lease_id}
        for use in uses:
            use.end()
        await eventually(lambda: p.manager.leases == {}, "released")
        count = len(p.manager.renewed)
        await asyncio.sleep(0.3)
        assert len(p.manager.renewed) == count, "no renewal after the release"


async def test_discard_stops_sharing_the_lease() -> None:
    async with pooled() as p:
        first = await p.pool.acquire("chat-a")
        second = await p.pool.acquire("chat-a")
        first.discard()  # its model server could not be reached
        third = await p.pool.acquire("chat-a")
        assert third.lease.lease_id != first.lease.lease_id
        assert first.lease.lease_id in p.manager.leases, "still held by the second request"
        second.end()
        await eventually(
            lambda: first.lease.lease_id in p.manager.released, "released once drained"
        )
        third.end()


async def test_a_refused_grant_fails_every_request_riding_on_it() -> None:
    async with pooled(max_uses=4) as p:
        (await p.pool.acquire("chat-a")).end()
        p.pool.retire_model("chat-a")
        p.manager.busy = True
        results = await asyncio.gather(
            *(p.pool.acquire("chat-a") for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, ManagerRefused) and r.status == 429 for r in results)
        assert p.pool.stats()["asks"] == 0


async def test_cancelled_riders_withdraw_the_grant_request() -> None:
    async with pooled(swap_delay=30.0) as p:
        tasks = [asyncio.create_task(p.pool.acquire("chat-a")) for _ in range(2)]
        await eventually(lambda: p.manager.states["chat-a"] == "starting", "swap started")
        for task in tasks:
            task.cancel()
        for task in tasks:
            with pytest.raises(asyncio.CancelledError):
                await task
        await eventually(lambda: p.manager.abandoned == 2, "the manager saw both leave")
        assert p.manager.granted == 0


async def test_one_cancelled_rider_leaves_the_others_waiting() -> None:
    async with pooled(swap_delay=0.5, max_uses=4) as p:
        p.pool._hint["chat-a"] = 4  # as if learnt from an earlier grant
        tasks = [asyncio.create_task(p.pool.acquire("chat-a")) for _ in range(3)]
        await eventually(lambda: p.manager.states["chat-a"] == "starting", "swap started")
        tasks[0].cancel()
        uses = [await tasks[1], await tasks[2]]
        assert p.manager.granted == 1 and p.manager.abandoned == 0
        assert uses[0].lease.lease_id == uses[1].lease.lease_id
        for use in uses:
            use.end()


async def test_close_releases_every_lease_and_refuses_new_requests() -> None:
    async with pooled() as p:
        busy = await p.pool.acquire("chat-a")
        lingering = await p.pool.acquire("chat-b")
        lingering.end()
        waiting = asyncio.create_task(p.pool.acquire("chat-a"))  # joins: no wait
        joined = await waiting
        await p.pool.close()
        assert p.manager.leases == {}
        assert sorted(p.manager.released) == sorted({busy.lease.lease_id, lingering.lease.lease_id})
        with pytest.raises(ManagerUnavailable) as refused:
            await p.pool.acquire("chat-a")
        assert refused.value.status == 503
        busy.end()  # after close: harmless
        joined.end()
        assert len(p.manager.released) == 2


async def test_close_fails_requests_waiting_for_a_grant() -> None:
    async with pooled(swap_delay=30.0) as p:
        task = asyncio.create_task(p.pool.acquire("chat-a"))
        await eventually(lambda: p.manager.states["chat-a"] == "starting", "swap started")
        await p.pool.close()
        with pytest.raises(ManagerUnavailable):
            await task


# -- unbounded leases, max_concurrent, contention ------------------------------------------


async def test_an_unbounded_lease_serves_any_number_of_sequential_requests() -> None:
    async with pooled(max_uses=0, max_concurrent=4) as p:
        lease_ids = set()
        for _ in range(50):
            use = await p.pool.acquire("chat-a")
            lease_ids.add(use.lease.lease_id)
            use.end()
        assert len(lease_ids) == 1 and p.manager.granted == 1
        assert p.manager.released == [], "lingering, not released"


async def test_a_lease_holds_at_most_max_concurrent_requests_at_once() -> None:
    async with pooled(max_uses=0, max_concurrent=2) as p:
        (await p.pool.acquire("chat-a")).end()  # a lease for two at once, lingering
        uses = await asyncio.gather(*(p.pool.acquire("chat-a") for _ in range(5)))
        by_lease: dict[str, int] = {}
        for use in uses:
            by_lease[use.lease.lease_id] = by_lease.get(use.lease.lease_id, 0) + 1
        assert sorted(by_lease.values()) == [1, 2, 2]
        assert p.manager.granted == 3
        for use in uses:
            use.end()
        again = [await p.pool.acquire("chat-a") for _ in range(2)]
        assert p.manager.granted == 3, "the open leases take new requests again"
        for use in again:
            use.end()


async def test_a_freed_slot_goes_to_a_waiting_request_and_the_grant_still_serves_later_ones() -> (
    None
):
    # The model's room at the manager is spent: the next grant would wait for a release
    # that never comes while the proxy keeps its lease busy.
    async with pooled(max_uses=0, max_concurrent=2) as p:
        first = [await p.pool.acquire("chat-a") for _ in range(2)]
        p.manager.gate = asyncio.Event()  # the next grant waits at the manager
        third = asyncio.create_task(p.pool.acquire("chat-a"))
        await eventually(lambda: p.pool.stats()["asks"] == 1, "a grant request")
        first[0].end()
        use = await asyncio.wait_for(third, 5)
        assert use.lease.lease_id == first[0].lease.lease_id
        assert p.manager.granted == 1 and p.pool.stats()["asks"] == 1
        fourth = asyncio.create_task(p.pool.acquire("chat-a"))  # rides on that grant
        await asyncio.sleep(0.05)
        assert not fourth.done()
        p.manager.gate.set()
        last = await asyncio.wait_for(fourth, 5)  # (it hung when the grant was cancelled)
        assert last.lease.lease_id != use.lease.lease_id
        assert p.manager.granted == 2 and p.manager.abandoned == 0
        for done in (first[1], use, last):
            done.end()


async def test_retire_model_releases_an_idle_lease_at_once() -> None:
    async with pooled(max_uses=0, linger=30.0) as p:
        use = await p.pool.acquire("chat-a")
        use.end()
        assert p.manager.released == []
        p.pool.retire_model("chat-a")
        await eventually(lambda: p.manager.released == [use.lease.lease_id], "released")
        nxt = await p.pool.acquire("chat-a")
        assert nxt.lease.lease_id != use.lease.lease_id and p.manager.granted == 2
        nxt.end()


async def test_retire_model_lets_requests_finish_and_sends_new_ones_to_a_new_grant() -> None:
    async with pooled(max_uses=0, linger=30.0) as p:
        busy = await p.pool.acquire("chat-a")
        other = await p.pool.acquire("chat-b")
        p.pool.retire_model("chat-a")
        later = await p.pool.acquire("chat-a")
        assert later.lease.lease_id != busy.lease.lease_id and p.manager.granted == 3
        assert busy.lease.lease_id in p.manager.leases, "still held by its request"
        busy.end()
        await eventually(lambda: busy.lease.lease_id in p.manager.released, "released on drain")
        assert other.lease.lease_id in p.manager.leases, "chat-b is not contended"
        later.end()
        other.end()


async def test_a_contended_renewal_retires_the_lease() -> None:
    async with pooled(max_uses=0, ttl=0.2, linger=30.0) as p:
        busy = await p.pool.acquire("chat-a")
        p.manager.contended = True  # another model waits for chat-a's memory
        await eventually(lambda: "chat-a" not in p.pool._open, "retired on renewal")
        assert busy.lease.lease_id in p.manager.leases, "its request goes on"
        p.manager.contended = False
        later = await p.pool.acquire("chat-a")
        assert later.lease.lease_id != busy.lease.lease_id and p.manager.granted == 2
        busy.end()
        await eventually(lambda: busy.lease.lease_id in p.manager.released, "released on drain")
        later.end()


async def test_an_unbounded_grant_asked_for_before_contention_is_not_shared_after_it() -> None:
    async with pooled(max_uses=0, linger=30.0) as p:
        p.manager.gate = asyncio.Event()
        first = asyncio.create_task(p.pool.acquire("chat-a"))
        await eventually(lambda: p.pool.stats()["asks"] == 1, "a grant request")
        p.pool.retire_model("chat-a")  # the event overtook the grant's answer
        p.manager.gate.set()
        use = await asyncio.wait_for(first, 5)  # the request it was asked for gets it
        second = await p.pool.acquire("chat-a")
        assert second.lease.lease_id != use.lease.lease_id and p.manager.granted == 2
        use.end()
        await eventually(lambda: use.lease.lease_id in p.manager.released, "released on drain")
        second.end()


async def test_leases_are_shared_within_one_key_only_and_the_grant_names_it() -> None:
    """The manager orders waiters by key and charges each lease to one key: a grant
    request names its key (never the key itself), and another key's request neither joins
    that lease nor takes a slot freed on it."""
    a, b = ("key-a", "normal"), ("key-b", "high")
    async with pooled(max_uses=0, max_concurrent=1) as p:
        first = await p.pool.acquire("chat-a", a)
        p.manager.gate = asyncio.Event()  # later grants wait in the manager's queue
        b_next = asyncio.create_task(p.pool.acquire("chat-a", b))
        await eventually(lambda: len(p.manager.lease_requests) == 2, "b to ask")
        a_next = asyncio.create_task(p.pool.acquire("chat-a", a))
        await eventually(lambda: len(p.manager.lease_requests) == 3, "a to ask")
        first.end()  # a's slot goes to a's own waiting request, never to b's (older)
        a_use = await asyncio.wait_for(a_next, 10)  # a guard against a hang only
        assert a_use.lease.lease_id == first.lease.lease_id
        await asyncio.sleep(0.05)
        assert not b_next.done(), "b does not ride a's lease"
        p.manager.gate.set()
        b_use = await b_next
        assert b_use.lease.lease_id != first.lease.lease_id
        asked = sorted((r["key_name"], r["key_class"]) for r in p.manager.lease_requests)
        assert asked == [("key-a", "normal"), ("key-a", "normal"), ("key-b", "high")]
        assert all(set(r) == {"model", "key_name", "key_class"} for r in p.manager.lease_requests)
        for use in (a_use, b_use):
            use.end()


async def test_riding_counts_the_requests_behind_a_grant_request_that_the_manager_cannot_see() -> (
    None
):
    async with pooled(max_uses=0, max_concurrent=2) as p:
        held = [await p.pool.acquire("chat-a") for _ in range(2)]  # the lease is full
        assert p.pool.riding("chat-a") == 0
        p.manager.gate = asyncio.Event()  # the next grant waits at the manager
        waiting = [asyncio.create_task(p.pool.acquire("chat-a")) for _ in range(2)]
        await eventually(lambda: p.pool.stats()["asks"] == 1, "one grant request")
        assert p.pool.riding("chat-a") == 1  # the manager counts the ask, not its 2nd rider
        assert p.pool.riding("chat-b") == 0
        p.manager.gate.set()
        for use in [*held, *await asyncio.gather(*waiting)]:
            use.end()
        assert p.pool.riding("chat-a") == 0
