"""The manager's events inside the proxy: fan-out to waiting callers, and load-time history.

`follow_events` (proxy/events.py) hands every ``state`` and ``swap`` event it reads
(the `wire.events` types) to `EventFeed.publish`. Callers that wait for a model (the
MCP tools, for their progress notifications) `subscribe()` and read the events as they
come. The feed also remembers how long each model took to load (``starting`` →
``ready``, from the manager's own timestamps) so a waiting caller can be told the usual
load time.

Everything runs on the proxy's event loop; nothing here blocks or is thread-safe.
Each subscriber's queue is bounded: a subscriber that does not read loses its
oldest events, never blocks the follower.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import deque

from wire.events import Event, StateEvent

HISTORY = 5
"""Load times remembered per model (the usual load time is their median)."""
QUEUE_SIZE = 64


class Subscription:
    """One reader of the feed. `get()` waits for the next event; `close()` when done."""

    def __init__(self, feed: EventFeed) -> None:
        self._feed = feed
        self._queue: deque[Event] = deque(maxlen=QUEUE_SIZE)
        self._ready = asyncio.Event()

    def _put(self, event: Event) -> None:
        self._queue.append(event)
        self._ready.set()

    async def get(self) -> Event:
        """The next event (blocks until one arrives; cancellable)."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def drain(self) -> list[Event]:
        """The events queued now, oldest first, taken out. Never blocks."""
        events = list(self._queue)
        self._queue.clear()
        return events

    def close(self) -> None:
        self._feed._subs.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventFeed:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._starting: dict[str, float] = {}
        self._loads: dict[str, deque[float]] = {}

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self._subs.add(sub)
        return sub

    def publish(self, event: Event) -> None:
        """Record a manager event and hand it to every subscriber. Never raises."""
        if isinstance(event, StateEvent):
            self._note_state(event)
        for sub in list(self._subs):
            sub._put(event)

    def _note_state(self, event: StateEvent) -> None:
        model, state = event.model, event.state
        if state == "starting":
            self._starting[model] = event.at
        elif state == "ready" and model in self._starting:
            took = event.at - self._starting.pop(model)
            if took >= 0:
                self._loads.setdefault(model, deque(maxlen=HISTORY)).append(took)
        elif state in ("failed", "stopped", "stopping"):
            self._starting.pop(model, None)

    def loading_since(self, model: str) -> float | None:
        """Unix time the current load of `model` began (None: not loading as far as seen)."""
        return self._starting.get(model)

    def usual_load(self, model: str) -> float | None:
        """Median seconds of the last loads of `model` seen by this proxy (None: none seen)."""
        loads = self._loads.get(model)
        return statistics.median(loads) if loads else None
