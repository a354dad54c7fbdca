"""Noticing a client that goes away, once for every program.

``async with watch_disconnect(receive) as watch:`` runs its body in the current task
while a watcher reads `receive`; an ``http.disconnect`` cancels the body (whatever it
awaits gets `asyncio.CancelledError`: a queued lease request leaves the queue, an
upstream connection is closed), and the block then raises `ClientDisconnected`, an
`ApiError` with status 499 (nginx's "client closed request") that nobody reads.

Call `watch.finish()` before the last bytes of an answer are sent: from then on a
disconnect (which a server reports as soon as the answer is complete) cancels nothing.
If the body completed at the moment the client left, its result stands and the
cancellation that was asked for is taken back. A cancellation from elsewhere (server
shutdown) is never swallowed.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from starlette.types import Receive

from wire.errors import ApiError


class ClientDisconnected(ApiError):
    """The client disconnected before its answer (499; the answer goes nowhere)."""

    status, type, code = 499, "invalid_request_error", "client_disconnected"


class watch_disconnect:  # noqa: N801 (used like a function: `async with watch_disconnect(...)`)
    """See the module docstring. Use once, on the task that serves the request."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[object] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.finished = False
        self.disconnected = False

    def finish(self) -> None:
        """The answer is complete (or being sent): a disconnect cancels nothing any more."""
        self.finished = True

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                if not self.finished and self._task is not None:
                    self.disconnected = True
                    self._task.cancel()
                return

    async def __aenter__(self) -> watch_disconnect:
        self._task = asyncio.current_task()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._watcher is not None:
            self._watcher.cancel()
        if not self.disconnected or self._task is None:
            return False
        if exc_type is None or not issubclass(exc_type, asyncio.CancelledError):
            # The cancellation we asked for has not been delivered yet: take it now.
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                pass
        if self._task.uncancel() > 0:
            return False  # cancelled from elsewhere too: let that cancellation go on
        if exc_type is None:
            return False  # the work was done as the client left: its result stands
        raise ClientDisconnected("The client disconnected before the answer.") from exc
