"""Noticing a client that goes away, once for every program.

``async with watch_disconnect(receive) as watch:`` runs its body in the current task
while a watcher reads `receive` (or, given the scope under `wire.http_server`, while
the connection itself stands watch); an ``http.disconnect`` cancels the body (whatever it
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

from starlette.types import Receive, Scope

from wire.errors import ApiError
from wire.http_server import CONNECTION_SCOPE_KEY, Trust


class ClientDisconnected(ApiError):
    """The client disconnected before its answer (499; the answer goes nowhere)."""

    status, type, code = 499, "invalid_request_error", "client_disconnected"


class watch_disconnect:  # noqa: N801 (used like a function: `async with watch_disconnect(...)`)
    """See the module docstring. Use once, on the task that serves the request.

    Given the request's `scope` under our HTTP server (`wire.http_server`), it hears of
    the disconnect from the connection itself (`Trust.on_lost`, called as the server's
    ``receive`` turns to ``http.disconnect``) instead of from a task reading `receive`
    (a task per request was about a tenth of the proxy's instructions per request)."""

    def __init__(self, receive: Receive, scope: Scope | None = None) -> None:
        self._receive = receive
        self._task: asyncio.Task[object] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._connection: Trust | None = None
        if scope is not None:
            connection = scope.get(CONNECTION_SCOPE_KEY)
            if isinstance(connection, Trust) and connection.on_lost is None:
                self._connection = connection  # (a watch within a watch reads `receive`)
        self.finished = False
        self.disconnected = False

    def finish(self) -> None:
        """The answer is complete (or being sent): a disconnect cancels nothing any more."""
        self.finished = True

    def _lost(self) -> None:
        if not self.finished and self._task is not None:
            self.disconnected = True
            self._task.cancel()

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
        connection = self._connection
        if connection is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        elif connection.lost:
            self._lost()  # gone already: as a watcher's first `receive` would have said
        else:
            connection.on_lost = self._lost
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._watcher is not None:
            self._watcher.cancel()
        connection = self._connection
        if connection is not None and connection.on_lost == self._lost:
            connection.on_lost = None
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
