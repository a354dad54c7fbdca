"""The event bus: fan-out, bounded queues that drop the oldest, closing."""

from __future__ import annotations

import asyncio

import pytest

from manager.events import EventBus, StateEvent, SwapEvent


def _state(i: int) -> StateEvent:
    return StateEvent(model=f"m{i}", state="ready", previous="starting", at=float(i))


async def test_every_subscriber_gets_every_event_in_order():
    bus = EventBus()
    one, two = bus.subscribe(), bus.subscribe()
    for i in range(3):
        bus.publish(_state(i))
    for sub in (one, two):
        assert [(await sub.next()).model for _ in range(3)] == ["m0", "m1", "m2"]


async def test_a_slow_subscriber_drops_its_oldest_and_never_blocks_the_publisher():
    bus = EventBus(queue_size=3)
    slow, fast = bus.subscribe(), bus.subscribe(queue_size=100)
    for i in range(10):
        bus.publish(_state(i))  # synchronous: returns even though nobody reads
    assert slow.dropped == 7
    assert [(await slow.next()).model for _ in range(3)] == ["m7", "m8", "m9"]
    assert fast.dropped == 0 and fast.pending() == 10


async def test_next_times_out_with_none():
    sub = EventBus().subscribe()
    assert await sub.next(timeout=0.001) is None


async def test_a_blocked_reader_wakes_on_publish():
    bus = EventBus()
    sub = bus.subscribe()
    reader = asyncio.create_task(sub.next())
    await asyncio.sleep(0)
    bus.publish(SwapEvent(from_model=None, to="a", at=1.0))
    event = await reader
    assert event.payload() == {"from": None, "to": "a", "at": 1.0}


async def test_close_ends_iteration_after_the_queue_drains():
    bus = EventBus()
    sub = bus.subscribe()
    bus.publish(_state(1))
    bus.close()
    assert [e.model async for e in sub] == ["m1"]
    assert bus.subscriber_count == 0
    late = bus.subscribe()
    with pytest.raises(StopAsyncIteration):
        await late.next()


async def test_closing_a_subscription_unsubscribes_and_wakes_its_reader():
    bus = EventBus()
    sub = bus.subscribe()
    reader = asyncio.create_task(sub.next())
    await asyncio.sleep(0)
    sub.close()
    with pytest.raises(StopAsyncIteration):
        await reader
    assert bus.subscriber_count == 0
    bus.publish(_state(1))
    assert sub.pending() == 0


def test_state_event_payload_has_the_contract_fields():
    payload = StateEvent(
        model="a", state="failed", previous="starting", at=2.0, error="boom"
    ).payload()
    assert payload == {
        "model": "a",
        "state": "failed",
        "previous": "starting",
        "at": 2.0,
        "error": "boom",
    }
