"""Generic ASGI pieces of the proxy's answers: a response cancelled on disconnect, and
the event-stream headers. Nothing here knows about models or leases."""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from wire.disconnect import ClientDisconnected, watch_disconnect
from wire.events import SSE_HEADERS as _SSE_HEADERS
from wire.events import SSE_MEDIA_TYPE

SSE_HEADERS = [
    (b"content-type", f"{SSE_MEDIA_TYPE}; charset=utf-8".encode()),
    *((k.lower().encode(), v.encode()) for k, v in _SSE_HEADERS.items()),
]
"""Raw ASGI headers of every event stream the proxy sends (unbuffered)."""


class Watched(Response):
    """An ASGI response whose `run` is cancelled when the client disconnects
    (`wire.disconnect.watch_disconnect`); a subclass calls `watch.finish()` before the
    last bytes of its answer. Nobody is answered after a disconnect."""

    background = None
    status_code = 200

    def __init__(self) -> None:
        """No Response.__init__: there is nothing to render up front."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with watch_disconnect(receive, scope) as watch:
                await self.run(send, watch)
        except ClientDisconnected:
            return

    async def run(self, send: Send, watch: watch_disconnect) -> None:
        raise NotImplementedError
