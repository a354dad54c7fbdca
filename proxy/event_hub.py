"""`EventHub`: each manager's event stream, fanned out to every browser.

`EventHub.run` is a lifespan task for the life of the proxy. It holds ONE
connection to each host's manager's ``GET /v1/events`` (`proxy.hosts.Fleet`; reconnecting
with backoff, 1 s doubling to 30 s, at once when the host was woken), parses each frame
once into the `wire.events` types
(`wire.events.parse_event`; a frame that is not the contract is skipped), and for each:

- hands it to `on_event` (`proxy.events.handle_event`: swap metrics, the cached model
  list dropped, the lease pool's contention, the MCP feed);
- keeps its own typed copy of that host's model list (`proxy.hosts.HostLink.events`: the
  manager's ``snapshot``, with each ``state`` event's state, time and error applied):
  the placement state (`proxy.placement`), and
- publishes the event to the browsers' fan-out (`wire.fanout.Fanout`: each event's
  frame is made once for every browser). With several hosts a ``state`` event is
  published with the model's merged state (`proxy.hosts.Fleet.merge`), so a browser sees
  one state per model.

A host's stream connecting marks it up (`Fleet.mark_up`); its end marks it down, ends
every browser's stream (they reconnect and get a fresh snapshot) and drops that
host's copy.

`EventStream` (``GET /api/events``) subscribes and sends that copy as the first
``snapshot`` event, then every event, with a ``: keepalive`` comment after
`heartbeat` idle seconds (`wire.events.event_stream`). While the hub is not connected
to the manager a new subscriber gets the 503 ``manager_unavailable`` envelope; when the
manager's stream ends, every subscriber's stream ends (browsers reconnect and get a
fresh snapshot). At most `max_subscribers` at once: one more gets 503
``too_many_event_clients``. A subscriber that cannot keep up loses its oldest queued
events (at most `QUEUE_SIZE` kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable

import aiohttp
from starlette.types import Send

from proxy.asgi import SSE_HEADERS, Watched
from proxy.errors import ManagerUnavailable, ProxyError
from proxy.hosts import Fleet, HostLink
from proxy.keys import ALL_MODELS, OPEN, Principal, visible
from proxy.settings import ProxySettings
from wire.disconnect import watch_disconnect
from wire.events import (
    KEEPALIVE,
    ContentionEvent,
    Event,
    Parsed,
    SseParser,
    StateEvent,
    SwapEvent,
    event_frame,
    event_stream,
    parse_event,
    snapshot_frame,
)
from wire.fanout import Fanout, Subscription, TooManySubscribers
from wire.models import ModelStatus

log = logging.getLogger("proxy.events")

QUEUE_SIZE = 256


class EventHub:
    def __init__(
        self,
        fleet: Fleet,
        on_event: Callable[[Parsed, HostLink], None],
        *,
        max_subscribers: int = ProxySettings.default("max_event_clients"),
    ) -> None:
        self.fleet = fleet
        self.on_event = on_event
        self._snapshot: bytes | None = None
        """`models` as a ``snapshot`` frame, made once until the next change."""
        self._models: dict[str, ModelStatus] | None = None
        self._stale = True
        self._browsers: Fanout[Event] = Fanout(
            queue_size=QUEUE_SIZE, max_subscribers=max_subscribers, encode=event_frame
        )

    @property
    def models(self) -> dict[str, ModelStatus] | None:
        """The model list (each model once) as of the last event; None while no host's
        stream is connected."""
        if self._stale:
            self._models = self.fleet.event_models()
            self._stale = False
        return self._models

    def _changed(self) -> None:
        self._stale = True
        self._snapshot = None

    @property
    def max_subscribers(self) -> int | None:
        return self._browsers.max_subscribers

    @property
    def subscriber_count(self) -> int:
        return self._browsers.subscriber_count

    # ---- one connection per manager ------------------------------------------------------
    async def run(self) -> None:
        """Follow every host's stream until cancelled; never raises otherwise."""
        async with asyncio.TaskGroup() as group:
            for link in self.fleet.links.values():
                group.create_task(self._run_one(link), name=f"events-{link.name}")

    async def _run_one(self, link: HostLink) -> None:
        backoff = 1.0
        while True:
            link.poke.clear()
            connected = False
            try:
                resp = await link.client.open_events()
                try:
                    backoff = 1.0
                    connected = True
                    self.fleet.mark_up(link)
                    await self._follow(resp, link)
                finally:
                    resp.close()
            except (ProxyError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.debug("host %s: event stream unavailable: %s", link.name, exc)
            except Exception:  # a malformed stream must not end the hub for good
                log.exception("following host %s's event stream failed; reconnecting", link.name)
            finally:
                self._disconnected(link, connected)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.poke.wait(), backoff)
            backoff = 1.0 if link.poke.is_set() else min(backoff * 2, 30.0)

    async def _follow(self, resp: aiohttp.ClientResponse, link: HostLink) -> None:
        parser = SseParser()
        async for line in resp.content:
            frame = parser.feed(line)
            if frame is None:
                continue
            parsed = parse_event(*frame)
            if parsed is None:
                log.debug("skipped a manager event that is not the contract: %s", frame[0])
                continue
            self.handle(parsed, link)

    def _disconnected(self, link: HostLink, was_connected: bool) -> None:
        link.events = None
        if self.fleet.multi and was_connected:
            self.fleet.mark_down(link)
        self._changed()
        if was_connected or not self.fleet.multi:
            self._browsers.end_all()

    def handle(self, parsed: Parsed, link: HostLink | None = None) -> None:
        """Apply one event of `link`'s manager (default: the first host): `on_event`, the
        host's model copy, every subscriber."""
        link = link or self.fleet.first
        try:
            self.on_event(parsed, link)
        except Exception:  # metrics or a feed must not stop the browsers' stream
            log.exception("handling a manager event failed")
        if isinstance(parsed, list):
            link.events = {m.id: m for m in parsed}
            self._changed()
            self.fleet.notify()
            if self.fleet.multi:  # a host (back): browsers rejoin for the merged snapshot
                self._browsers.end_all()
            return  # subscribers get the hub's own snapshot when they join
        if isinstance(parsed, StateEvent) and link.events is not None:
            self._apply(parsed, link)
            self.fleet.notify()
            if self.fleet.multi:
                merged = (self.models or {}).get(parsed.model)
                if merged is not None and merged.state != parsed.state:
                    parsed = parsed.model_copy(update={"state": merged.state})
        self._browsers.publish(parsed)

    def _apply(self, event: StateEvent, link: HostLink) -> None:
        assert link.events is not None
        model = link.events.get(event.model)
        if model is None:
            return
        changes: dict[str, object] = {"state": event.state, "since": event.at}
        if event.error is not None:
            changes["last_error"] = event.error
        link.events[event.model] = model.model_copy(update=changes)
        self._changed()

    # ---- browser subscribers ---------------------------------------------------------------
    def subscribe(self, who: Principal = OPEN) -> tuple[Subscription[Event], bytes]:
        """A new subscriber and the ``snapshot`` frame it starts with (taken at the same
        instant), of the models `who` may use. Raises ManagerUnavailable (503) while not
        connected or when `max_subscribers` are in."""
        models = self.models
        if models is None:
            raise ManagerUnavailable(
                "The manager's event stream is not available right now; retry shortly."
            )
        try:
            sub = self._browsers.subscribe()
        except TooManySubscribers as exc:
            raise ManagerUnavailable(
                f"Too many event streams are open ({exc.limit}); retry later.",
                code="too_many_event_clients",
                source="proxy",
                headers={"Retry-After": "5"},
            ) from None
        if who.models != ALL_MODELS:  # a key limited to some models: its own snapshot
            shown = visible(models, who)
            return sub, snapshot_frame(shown[k] for k in sorted(shown))
        if self._snapshot is None:
            self._snapshot = snapshot_frame(models[k] for k in sorted(models))
        return sub, self._snapshot


def scoped(event: Event, who: Principal) -> Event | None:
    """`event` as a key limited to some models sees it: None when it is about models it may
    not use only; a swap from such a model shows no name (``from`` null)."""
    if isinstance(event, StateEvent):
        return event if who.may_use(event.model) else None
    if isinstance(event, SwapEvent):
        if not who.may_use(event.to):
            return None
        if event.from_model is not None and not who.may_use(event.from_model):
            return event.model_copy(update={"from_model": None})
        return event
    if isinstance(event, ContentionEvent):
        models = [m for m in event.models if who.may_use(m)]
        return event.model_copy(update={"models": models}) if models else None
    return None


async def scoped_stream(
    first: bytes, sub: Subscription[Event], heartbeat: float, who: Principal
) -> AsyncGenerator[bytes, None]:
    """As `wire.events.event_stream`, with each event `scoped` to `who` (encoded for this
    reader alone: only keys limited to some models take this way)."""
    try:
        yield first
        while True:
            try:
                item = await sub.next(heartbeat)
            except StopAsyncIteration:
                return
            if item is None:
                yield KEEPALIVE
                continue
            shown = scoped(item, who)
            if shown is not None:
                yield event_frame(shown)
    finally:
        sub.close()


class EventStream(Watched):
    """``GET /api/events``: the hub's events for one browser, until either side closes."""

    def __init__(self, hub: EventHub, heartbeat: float, who: Principal = OPEN) -> None:
        self.hub = hub
        self.heartbeat = heartbeat
        self.who = who
        """Whose stream: a key limited to some models sees events about those only."""

    async def run(self, send: Send, watch: watch_disconnect) -> None:
        try:
            sub, snapshot = self.hub.subscribe(self.who)
        except ProxyError as exc:
            watch.finish()
            await exc.send(send)
            return
        try:
            frames_of = (
                event_stream(snapshot, sub, self.heartbeat)
                if self.who.models == ALL_MODELS
                else scoped_stream(snapshot, sub, self.heartbeat, self.who)
            )
            async with contextlib.aclosing(frames_of) as frames:
                await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
                async for chunk in frames:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                watch.finish()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            sub.close()  # also when the stream never began
