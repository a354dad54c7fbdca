"""Following the manager's event stream: swap metrics and a fresh model list.

`follow_events` runs for the life of the proxy (a lifespan task). It counts
``swap`` events into ``homelab_proxy_swaps_total`` and drops the cached model
list on every ``state`` event, so /v1/models shows "loading" vs "ready" at once.
It reconnects with backoff (1 s doubling to 30 s) and stops only when cancelled.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson

from proxy.context import ProxyContext
from proxy.errors import ProxyError

log = logging.getLogger("proxy.events")


def handle_event(ctx: ProxyContext, event: bytes, data: bytes) -> None:
    if event == b"swap":
        try:
            swap = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(swap, dict):
            ctx.metrics.swaps.labels(
                str(swap.get("from") or "none"), str(swap.get("to") or "none")
            ).inc()
    if event in (b"state", b"swap", b"snapshot"):
        ctx.manager.invalidate_models()


async def follow_events(ctx: ProxyContext) -> None:
    backoff = 1.0
    while True:
        try:
            resp = await ctx.manager.open_events()
            try:
                backoff = 1.0
                event, data = b"", []
                async for line in resp.content:
                    line = line.rstrip(b"\r\n")
                    if not line:
                        if data:
                            handle_event(ctx, event or b"message", b"\n".join(data))
                        event, data = b"", []
                    elif line.startswith(b"event:"):
                        event = line[6:].strip()
                    elif line.startswith(b"data:"):
                        data.append(line[5:].lstrip(b" "))
            finally:
                resp.close()
        except (ProxyError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("manager event stream unavailable: %s", exc)
        except Exception:  # a malformed stream must not end the follower for good
            log.exception("following the manager's event stream failed; reconnecting")
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 30.0)
