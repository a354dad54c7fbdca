"""The one fan-out (`wire.fanout`): every reader gets every item, bounded queues that drop
the oldest, the subscriber cap, ending and closing, frames made once per item, and the
event stream built on it (`wire.events.event_stream`: snapshot first, keep-alives)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from wire.events import (
    KEEPALIVE,
    Event,
    SseParser,
    StateEvent,
    SwapEvent,
    event_frame,
    event_stream,
    parse_event,
)
from wire.fanout import Fanout, TooManySubscribers


def _state(i: int) -> StateEvent:
    return StateEvent(model=f"m{i}", state="ready", previous="starting", at=float(i))


def _events(**kwargs: object) -> Fanout[Event]:
    return Fanout(encode=event_frame, **kwargs)  # type: ignore[arg-type]


async def test_every_subscriber_gets_every_event_in_order() -> None:
    bus = _events()
    one, two = bus.subscribe(), bus.subscribe()
    for i in range(3):
        bus.publish(_state(i))
    for sub in (one, two):
        assert [(await sub.get()).model for _ in range(3)] == ["m0", "m1", "m2"]  # type: ignore[union-attr]


async def test_a_slow_subscriber_drops_its_oldest_and_never_blocks_the_publisher() -> None:
    bus = _events(queue_size=3)
    slow, fast = bus.subscribe(), bus.subscribe(queue_size=100)
    for i in range(10):
        bus.publish(_state(i))  # synchronous: returns even though nobody reads
    assert slow.dropped == 7
    assert [(await slow.get()).model for _ in range(3)] == ["m7", "m8", "m9"]  # type: ignore[union-attr]
    assert fast.dropped == 0 and fast.pending() == 10


async def test_next_times_out_with_none() -> None:
    sub = _events().subscribe()
    assert await sub.next(timeout=0.001) is None
    assert await sub.next_frame(timeout=0.001) is None


async def test_a_blocked_reader_wakes_on_publish() -> None:
    bus = _events()
    sub = bus.subscribe()
    reader = asyncio.create_task(sub.next())
    await asyncio.sleep(0)
    bus.publish(SwapEvent(from_model=None, to="a", at=1.0))
    event = await reader
    assert event is not None and event.payload() == {"from": None, "to": "a", "at": 1.0}


async def test_close_ends_iteration_after_the_queue_drains() -> None:
    bus = _events()
    sub = bus.subscribe()
    bus.publish(_state(1))
    bus.close()
    assert [e.model async for e in sub] == ["m1"]  # type: ignore[union-attr]
    assert bus.subscriber_count == 0
    late = bus.subscribe()
    with pytest.raises(StopAsyncIteration):
        await late.next()


async def test_end_all_ends_the_readers_in_but_not_later_ones() -> None:
    """The proxy's relay: the manager's stream ended, so every browser's stream ends (they
    reconnect for a fresh snapshot); the relay itself goes on."""
    bus = _events()
    early = bus.subscribe()
    bus.publish(_state(1))
    bus.end_all()
    assert bus.subscriber_count == 0
    assert [e.model async for e in early] == ["m1"]  # type: ignore[union-attr]
    late = bus.subscribe()
    bus.publish(_state(2))
    assert (await late.get()).model == "m2"  # type: ignore[union-attr]


async def test_closing_a_subscription_unsubscribes_and_wakes_its_reader() -> None:
    bus = _events()
    sub = bus.subscribe()
    reader = asyncio.create_task(sub.next())
    await asyncio.sleep(0)
    sub.close()
    with pytest.raises(StopAsyncIteration):
        await reader
    assert bus.subscriber_count == 0
    bus.publish(_state(1))
    assert sub.pending() == 0


def test_a_subscription_is_a_context_manager() -> None:
    bus: Fanout[int] = Fanout()
    with bus.subscribe() as sub:
        bus.publish(1)
        assert bus.subscriber_count == 1
    assert bus.subscriber_count == 0 and sub.drain() == [1]


def test_the_subscriber_cap_refuses_one_more_and_frees_places() -> None:
    bus: Fanout[int] = Fanout(max_subscribers=2)
    first, _ = bus.subscribe(), bus.subscribe()
    with pytest.raises(TooManySubscribers) as refused:
        bus.subscribe()
    assert refused.value.limit == 2
    first.close()
    bus.subscribe()
    bus.subscribe(limit=3)  # a limit given to `subscribe` wins over the fan-out's own
    assert bus.subscriber_count == 3
    with pytest.raises(TooManySubscribers):
        bus.subscribe(limit=3)
    with pytest.raises(TooManySubscribers):
        Fanout[int]().subscribe(limit=0)


async def test_each_item_is_encoded_once_for_every_reader() -> None:
    encoded: list[int] = []

    def encode(item: int) -> bytes:
        encoded.append(item)
        return str(item).encode()

    bus = Fanout(encode=encode)
    subs = [bus.subscribe() for _ in range(5)]
    bus.publish(7)
    assert [await s.next_frame() for s in subs] == [b"7"] * 5
    assert encoded == [7]
    plain: Fanout[int] = Fanout()
    reader = plain.subscribe()
    plain.publish(1)
    with pytest.raises(TypeError):
        await reader.next_frame()


def test_a_state_event_payload_has_the_contract_fields() -> None:
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


async def test_an_event_stream_sends_the_snapshot_first_then_frames_and_keepalives() -> None:
    bus = _events()
    sub = bus.subscribe()
    stream = event_stream(b"event: snapshot\ndata: []\n\n", sub, heartbeat=0.01)
    async with contextlib.aclosing(stream):
        assert await anext(stream) == b"event: snapshot\ndata: []\n\n"
        assert await anext(stream) == KEEPALIVE  # nothing published: idle
        bus.publish(_state(1))
        chunk = await anext(stream)
        parser = SseParser()
        parsed = [f for line in chunk.splitlines(keepends=True) if (f := parser.feed(line))]
        assert [parse_event(*f) for f in parsed] == [_state(1)]
        bus.end_all()
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
    assert bus.subscriber_count == 0


async def test_an_event_stream_closed_early_unsubscribes() -> None:
    bus = _events()
    stream = event_stream(b"first", bus.subscribe())
    assert await anext(stream) == b"first"
    await stream.aclose()
    assert bus.subscriber_count == 0
