"""`Fanout`: one publisher, many readers, each with a bounded queue. The one fan-out.

Not contract: a utility the programs share, kept in `wire` because every program
imports `wire` and none imports another (docs/architecture.md, "The shared contract").
It carries every event stream there is:

- the manager's events to its ``GET /v1/events`` streams (`manager.scheduler` publishes
  the `wire.events` types, `manager.api` streams them);
- inside the proxy, the manager's events to every ``GET /api/events`` browser
  (`proxy.event_hub`) and to the MCP calls that wait for a model (`proxy.feed`).

The rules, the same for all of them:

- `publish` is synchronous, never blocks and never fails: a reader that does not keep
  up loses its *oldest* items (counted in `Subscription.dropped`), never the publisher's
  time.
- With an `encode` (`wire.events.event_frame` for the event streams) each published item
  is encoded at most once, however many readers send it (`Subscription.next_frame`).
- `subscribe` refuses with `TooManySubscribers` once `limit` (default
  `max_subscribers`) readers are in; each program answers that its own way (the
  manager 429 ``busy``, the proxy 503 ``too_many_event_clients``).
- `end_all` ends every reader now in (each drains its queue, then its `next` raises
  `StopAsyncIteration`) and the fan-out goes on; `close` also ends every later reader.

Everything runs on one event loop's thread; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_QUEUE_SIZE = 256
"""Items a reader may fall behind by before it loses its oldest."""


class TooManySubscribers(Exception):
    """`Fanout.subscribe` with `limit` readers in already."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} subscribers are in already")
        self.limit = limit


class _Entry(Generic[T]):
    """One published item, shared by every reader's queue; its frame is made once."""

    __slots__ = ("item", "frame")

    def __init__(self, item: T) -> None:
        self.item = item
        self.frame: bytes | None = None


class Subscription(Generic[T]):
    """One reader's bounded queue. Read with `next`, `get`, `next_frame` or ``async for``;
    `close()` when done (or use it as a context manager)."""

    def __init__(self, fanout: Fanout[T], maxsize: int) -> None:
        self._fanout = fanout
        self._queue: deque[_Entry[T]] = deque(maxlen=maxsize)
        self._signal = asyncio.Event()
        self.ended = False
        """No more items will come (the reader drains what is queued, then stops)."""
        self.dropped = 0
        """Items lost because the queue was full (the oldest go first)."""

    def _put(self, entry: _Entry[T]) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(entry)
        self._signal.set()

    def _end(self) -> None:
        self.ended = True
        self._signal.set()

    def pending(self) -> int:
        """Items queued and not yet read."""
        return len(self._queue)

    def drain(self) -> list[T]:
        """Every item queued now, oldest first, taken out of the queue. Never blocks."""
        items = [entry.item for entry in self._queue]
        self._queue.clear()
        return items

    async def _next_entry(self, timeout: float | None) -> _Entry[T] | None:  # noqa: ASYNC109
        while not self._queue:
            if self.ended:
                raise StopAsyncIteration
            self._signal.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._signal.wait()
            except TimeoutError:
                return None
        return self._queue.popleft()

    async def next(self, timeout: float | None = None) -> T | None:  # noqa: ASYNC109
        """The next item; None when `timeout` seconds pass first (None: wait for ever).

        Raises `StopAsyncIteration` once the subscription has ended and its queue is
        drained. Cancellable (nothing is lost: an item is taken only when returned).
        """
        entry = await self._next_entry(timeout)
        return None if entry is None else entry.item

    async def get(self) -> T:
        """The next item, however long it takes (raises as `next`)."""
        entry = await self._next_entry(None)
        assert entry is not None  # no timeout: an item or StopAsyncIteration
        return entry.item

    async def next_frame(self, timeout: float | None = None) -> bytes | None:  # noqa: ASYNC109
        """As `next`, but the item's bytes from the fan-out's `encode`, made once per item
        for every reader."""
        entry = await self._next_entry(timeout)
        if entry is None:
            return None
        if entry.frame is None:
            entry.frame = self._fanout.encode(entry.item)
        return entry.frame

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        return await self.get()

    def close(self) -> None:
        """Stop receiving; a reader blocked in `next()` wakes and ends. Idempotent."""
        self._end()
        self._fanout._discard(self)

    def __enter__(self) -> Subscription[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Fanout(Generic[T]):
    """One publisher's items to every subscriber. `publish` is O(subscribers)."""

    def __init__(
        self,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_subscribers: int | None = None,
        encode: Callable[[T], bytes] | None = None,
    ) -> None:
        """`queue_size`: each reader's bound (a `subscribe` may give its own);
        `max_subscribers`: readers at once (None: no bound); `encode`: an item's bytes,
        for `Subscription.next_frame`."""
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._queue_size = queue_size
        self.max_subscribers = max_subscribers
        self._encode = encode
        self._subscribers: dict[Subscription[T], None] = {}  # ordered: publish in join order
        self.closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def encode(self, item: T) -> bytes:
        if self._encode is None:
            raise TypeError("this fan-out has no encode: read items, not frames")
        return self._encode(item)

    def subscribe(
        self, *, queue_size: int | None = None, limit: int | None = None
    ) -> Subscription[T]:
        """A new subscription that sees every item published from now on (an ended one
        once the fan-out is closed). Raises `TooManySubscribers` when `limit` (default
        `max_subscribers`) are in already."""
        limit = self.max_subscribers if limit is None else limit
        if limit is not None and len(self._subscribers) >= limit:
            raise TooManySubscribers(limit)
        sub = Subscription(self, queue_size or self._queue_size)
        if self.closed:
            sub._end()
        else:
            self._subscribers[sub] = None
        return sub

    def publish(self, item: T) -> None:
        """Queue `item` for every subscriber. Never blocks; drops a slow reader's oldest."""
        entry = _Entry(item)
        for sub in self._subscribers:
            sub._put(entry)

    def end_all(self) -> None:
        """End every subscription now in (readers drain what is queued, then stop); later
        subscriptions are not affected. Idempotent."""
        subscribers = list(self._subscribers)
        self._subscribers.clear()
        for sub in subscribers:
            sub._end()

    def close(self) -> None:
        """`end_all`, and every later subscription starts ended. Idempotent."""
        self.closed = True
        self.end_all()

    def _discard(self, sub: Subscription[T]) -> None:
        self._subscribers.pop(sub, None)
