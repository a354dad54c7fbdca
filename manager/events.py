"""An in-process publish/subscribe bus for model state and swap events.

The scheduler publishes the event types of `wire.events` (`StateEvent`, `SwapEvent`,
`ContentionEvent`);
`GET /v1/events` subscribers read. Publishing never
blocks and never fails: each subscriber has a bounded queue, and a slow
subscriber loses its *oldest* events (counted in `Subscription.dropped`).
Everything runs on the event loop's thread; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
from collections import deque

from wire.events import Event, StateEvent, SwapEvent

__all__ = ["DEFAULT_QUEUE_SIZE", "Event", "EventBus", "StateEvent", "SwapEvent", "Subscription"]

DEFAULT_QUEUE_SIZE = 256


class Subscription:
    """One reader's bounded queue. Use `next()` or `async for`; call `close()` when done."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: deque[Event] = deque(maxlen=maxsize)
        self._signal = asyncio.Event()
        self.closed = False
        self.dropped = 0

    def _put(self, event: Event) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(event)
        self._signal.set()

    def pending(self) -> int:
        """Events queued and not yet read."""
        return len(self._queue)

    def drain(self) -> list[Event]:
        """Every event queued now, oldest first, taken out of the queue. Never blocks."""
        events = list(self._queue)
        self._queue.clear()
        return events

    async def next(self, timeout: float | None = None) -> Event | None:  # noqa: ASYNC109
        """The next event; None when `timeout` seconds pass first.

        Blocks until an event arrives. Raises `StopAsyncIteration` once the
        subscription (or the bus) is closed and the queue is drained. Cancellable.
        """
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._signal.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._signal.wait()
            except TimeoutError:
                return None
        return self._queue.popleft()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        event = await self.next()
        assert event is not None  # no timeout: only an event or StopAsyncIteration
        return event

    def close(self) -> None:
        """Stop receiving; a reader blocked in `next()` wakes and ends. Idempotent."""
        self.closed = True
        self._signal.set()
        self._bus._discard(self)


class EventBus:
    """Fan-out of events to subscribers. `publish` is synchronous and O(subscribers)."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self.closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, queue_size: int | None = None) -> Subscription:
        """A new subscription that sees every event published from now on."""
        sub = Subscription(self, queue_size or self._queue_size)
        if self.closed:
            sub.closed = True
        else:
            self._subscribers.add(sub)
        return sub

    def publish(self, event: Event) -> None:
        """Queue `event` for every subscriber. Never blocks; drops a slow reader's oldest."""
        for sub in list(self._subscribers):
            sub._put(event)

    def close(self) -> None:
        """End every subscription (readers drain what is queued, then stop). Idempotent."""
        self.closed = True
        for sub in list(self._subscribers):
            sub.close()

    def _discard(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
