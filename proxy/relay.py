"""`EventRelay`: the manager's event stream relayed unchanged to the web UI (``/api/events``).

The stream is the manager's `wire.events` SSE (snapshot, state, swap, keepalives); the
relay ends when either side closes, and a client that leaves closes the manager
connection. If the manager refuses or cannot be reached the client gets its envelope.
"""

from __future__ import annotations

import logging

from starlette.types import Send

from proxy.asgi import SSE_HEADERS, TRANSPORT_ERRORS, Watched
from proxy.context import ProxyContext
from proxy.errors import ProxyError
from wire.disconnect import watch_disconnect

log = logging.getLogger("proxy.relay")


class EventRelay(Watched):
    """Relay the manager's SSE event stream unchanged until either side closes."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx

    async def run(self, send: Send, watch: watch_disconnect) -> None:
        try:
            resp = await self.ctx.manager.open_events()
        except ProxyError as exc:
            watch.finish()
            await exc.send(send)
            return
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            try:
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except TRANSPORT_ERRORS as exc:
                log.info("manager event stream ended: %s", exc)
            watch.finish()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            resp.close()
