"""Following the manager's event stream: swap metrics and a fresh model list.

`follow_events` runs for the life of the proxy (a lifespan task). It counts
``swap`` events into ``homelab_proxy_swaps_total``, drops the cached model
list on every ``state``, ``swap`` or ``snapshot`` event, so /v1/models shows
"loading" vs "ready" at once, and hands ``state`` and ``swap`` events to
`ctx.feed` (proxy/feed.py: progress of waiting MCP calls, load-time history). Frames are parsed with the types the manager sends
(`wire.events`). It reconnects with backoff (1 s doubling to 30 s) and stops only
when cancelled.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from proxy.context import ProxyContext
from proxy.errors import ProxyError
from wire.events import SNAPSHOT, STATE, SWAP, SseParser, StateEvent, SwapEvent, parse_event

log = logging.getLogger("proxy.events")


def handle_event(ctx: ProxyContext, event: str, data: str) -> None:
    if event in (STATE, SWAP):
        parsed = parse_event(event, data)
        if isinstance(parsed, SwapEvent):
            ctx.metrics.swaps.labels(parsed.from_model or "none", parsed.to or "none").inc()
        if isinstance(parsed, StateEvent | SwapEvent):
            ctx.feed.publish(parsed)
    if event in (STATE, SWAP, SNAPSHOT):
        ctx.manager.invalidate_models()
        if ctx.jobs is not None:
            ctx.jobs.wake()  # a model became resident (or left): jobs may run now


async def follow_events(ctx: ProxyContext) -> None:
    backoff = 1.0
    while True:
        try:
            resp = await ctx.manager.open_events()
            try:
                backoff = 1.0
                parser = SseParser()
                async for line in resp.content:
                    frame = parser.feed(line)
                    if frame is not None:
                        handle_event(ctx, *frame)
            finally:
                resp.close()
        except (ProxyError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("manager event stream unavailable: %s", exc)
        except Exception:  # a malformed stream must not end the follower for good
            log.exception("following the manager's event stream failed; reconnecting")
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 30.0)
