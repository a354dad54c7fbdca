"""`EventHub`: one event stream from the manager, fanned out to every browser.

`EventHub.run` is a lifespan task for the life of the proxy. It holds ONE
connection to the manager's ``GET /v1/events`` (reconnecting with backoff, 1 s
doubling to 30 s), and for each event it:

- hands it to `on_event` (`proxy.events.handle_event`: swap metrics, the cached model
  list dropped, the MCP feed);
- keeps its own copy of the model list (the manager's ``snapshot``, with each
  ``state`` event's state, time and error applied), and
- queues the event for every subscriber.

`EventStream` (``GET /api/events``) subscribes and sends that copy as the first
``snapshot`` event, then every event, with a ``: keepalive`` comment after
`heartbeat` idle seconds. While the hub is not connected to the manager a new
subscriber gets the 503 ``manager_unavailable`` envelope; when the manager's stream
ends, every subscriber's stream ends (browsers reconnect and get a fresh snapshot).
At most `max_subscribers` at once: one more gets 503 ``too_many_event_clients``.
A subscriber that cannot keep up loses its oldest queued events (at most 256 kept).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from starlette.types import Send

from proxy.asgi import SSE_HEADERS, Watched
from proxy.errors import ManagerUnavailable, ProxyError
from proxy.manager_client import ManagerClient
from proxy.settings import ProxySettings
from wire.disconnect import watch_disconnect
from wire.events import KEEPALIVE, SNAPSHOT, STATE, SseParser, frame

log = logging.getLogger("proxy.events")

QUEUE_SIZE = 256


class _Subscriber:
    __slots__ = ("queue", "signal", "ended")

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque(maxlen=QUEUE_SIZE)
        self.signal = asyncio.Event()
        self.ended = False

    def put(self, chunk: bytes) -> None:
        self.queue.append(chunk)
        self.signal.set()

    def end(self) -> None:
        self.ended = True
        self.signal.set()


class EventHub:
    def __init__(
        self,
        manager: ManagerClient,
        on_event: Callable[[str, str], None],
        *,
        max_subscribers: int = ProxySettings.default("max_event_clients"),
    ) -> None:
        self.manager = manager
        self.on_event = on_event
        self.max_subscribers = max_subscribers
        self.models: dict[str, dict[str, Any]] | None = None
        """The manager's model list as of the last event; None while not connected."""
        self._subscribers: set[_Subscriber] = set()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    # ---- the one manager connection ------------------------------------------------------
    async def run(self) -> None:
        """Follow the manager's stream until cancelled; never raises otherwise."""
        backoff = 1.0
        while True:
            try:
                resp = await self.manager.open_events()
                try:
                    backoff = 1.0
                    await self._follow(resp)
                finally:
                    resp.close()
            except (ProxyError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.debug("manager event stream unavailable: %s", exc)
            except Exception:  # a malformed stream must not end the hub for good
                log.exception("following the manager's event stream failed; reconnecting")
            finally:
                self._disconnected()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _follow(self, resp: aiohttp.ClientResponse) -> None:
        parser = SseParser()
        async for line in resp.content:
            parsed = parser.feed(line)
            if parsed is not None:
                self.handle(*parsed)

    def _disconnected(self) -> None:
        self.models = None
        for sub in list(self._subscribers):
            sub.end()
        self._subscribers.clear()

    def handle(self, event: str, data: str) -> None:
        """Apply one manager event: `on_event`, the model copy, every subscriber."""
        try:
            self.on_event(event, data)
        except Exception:  # metrics or a feed must not stop the browsers' stream
            log.exception("handling a manager event failed")
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if event == SNAPSHOT:
            if isinstance(payload, list):
                self.models = {
                    m["id"]: m
                    for m in payload
                    if isinstance(m, dict) and isinstance(m.get("id"), str)
                }
            return  # subscribers get the hub's own snapshot when they join
        if event == STATE and isinstance(payload, dict) and self.models is not None:
            model = self.models.get(str(payload.get("model")))
            if model is not None:
                model["state"] = payload.get("state", model.get("state"))
                model["since"] = payload.get("at", model.get("since"))
                if payload.get("error") is not None:
                    model["last_error"] = payload["error"]
        chunk = frame(event, payload)
        for sub in self._subscribers:
            sub.put(chunk)

    # ---- browser subscribers ---------------------------------------------------------------
    def subscribe(self) -> _Subscriber:
        """A new subscriber whose queue starts with the current snapshot. Raises
        ManagerUnavailable (503) while not connected or when `max_subscribers` are in."""
        if self.models is None:
            raise ManagerUnavailable(
                "The manager's event stream is not available right now; retry shortly."
            )
        if len(self._subscribers) >= self.max_subscribers:
            raise ManagerUnavailable(
                f"Too many event streams are open ({self.max_subscribers}); retry later.",
                code="too_many_event_clients",
                source="proxy",
                headers={"Retry-After": "5"},
            )
        sub = _Subscriber()
        sub.put(frame(SNAPSHOT, [self.models[k] for k in sorted(self.models)]))
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        self._subscribers.discard(sub)


class EventStream(Watched):
    """``GET /api/events``: the hub's events for one browser, until either side closes."""

    def __init__(self, hub: EventHub, heartbeat: float) -> None:
        self.hub = hub
        self.heartbeat = heartbeat

    async def run(self, send: Send, watch: watch_disconnect) -> None:
        try:
            sub = self.hub.subscribe()
        except ProxyError as exc:
            watch.finish()
            await exc.send(send)
            return
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            while True:
                while sub.queue:
                    chunk = sub.queue.popleft()
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if sub.ended:
                    break
                sub.signal.clear()
                try:
                    async with asyncio.timeout(self.heartbeat):
                        await sub.signal.wait()
                except TimeoutError:
                    chunk = KEEPALIVE
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            watch.finish()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.hub.unsubscribe(sub)
