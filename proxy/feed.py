"""The manager's events inside the proxy, for callers waiting on a model: fan-out and
load-time history.

The event hub (`proxy.event_hub.EventHub`, the proxy's one connection to the manager's
stream) parses each frame once and hands it to `proxy.events.handle_event`, which passes
every ``state`` and ``swap`` event (the `wire.events` types) to `EventFeed.publish`.
Callers that wait for a model (the MCP tools, for their progress notifications)
`subscribe()` (a `wire.fanout.Subscription`: ``with feed.subscribe() as events``, then
``await events.get()`` / ``events.drain()``) and read the events as they come. The feed
also remembers how long each model took to load (``starting`` → ``ready``, from the
manager's own timestamps) so a waiting caller can be told the usual load time.

Everything runs on the proxy's event loop; nothing here blocks or is thread-safe.
Each subscriber's queue is bounded (`QUEUE_SIZE`): a subscriber that does not read loses
its oldest events, never blocks the hub.
"""

from __future__ import annotations

import statistics
from collections import deque

from wire.events import StateEvent, SwapEvent
from wire.fanout import Fanout, Subscription

HISTORY = 5
"""Load times remembered per model (the usual load time is their median)."""
QUEUE_SIZE = 64

FeedEvent = StateEvent | SwapEvent


class EventFeed:
    def __init__(self) -> None:
        self._fanout: Fanout[FeedEvent] = Fanout(queue_size=QUEUE_SIZE)
        self._starting: dict[str, float] = {}
        self._loads: dict[str, deque[float]] = {}

    @property
    def subscriber_count(self) -> int:
        return self._fanout.subscriber_count

    def subscribe(self) -> Subscription[FeedEvent]:
        """Every event from now on, until the subscription is closed (never ends by itself)."""
        return self._fanout.subscribe()

    def publish(self, event: FeedEvent) -> None:
        """Record a manager event and hand it to every subscriber. Never raises."""
        if isinstance(event, StateEvent):
            self._note_state(event)
        self._fanout.publish(event)

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
