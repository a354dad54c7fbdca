"""`QuickServer`: uvicorn's `Server` with its fixed waits made short, for in-process test servers.

uvicorn 0.54 (pinned in pyproject.toml) polls `should_exit` every 0.1 s, sleeps a fixed
0.1 s after asking its connections to close, and then polls them every 0.1 s. A test
that starts and stops two or three servers pays up to half a second for those waits
alone, and the proxy's unit tier does that about 160 times. `QuickServer` keeps every
step of uvicorn's shutdown in the same order (stop listening, shut the connections down,
wait for them and for the running tasks within `timeout_graceful_shutdown`, cancelling
them past it, then the lifespan shutdown); only the polls are shorter. Nothing of the
app under test differs: the product's own servers (manager.cli.ManagerServer, the
proxy's __main__) are not this class.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import uvicorn

POLL_S = 0.005


class QuickServer(uvicorn.Server):
    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            await asyncio.sleep(POLL_S)
            # on_tick refreshes the Date header on a tick of 0, as uvicorn does every 0.1 s.
            counter = (counter + 1) % 20
            should_exit = await self.on_tick(0 if counter == 0 else 1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        await asyncio.sleep(POLL_S)
        try:
            await asyncio.wait_for(
                self._wait_tasks_to_complete(), timeout=self.config.timeout_graceful_shutdown
            )
        except TimeoutError:
            for t in self.server_state.tasks:
                t.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _until(self, done: Callable[[], bool]) -> None:
        while True:
            if done() or self.force_exit:
                return
            await asyncio.sleep(POLL_S)

    async def _wait_tasks_to_complete(self) -> None:
        await self._until(lambda: not self.server_state.connections)
        await self._until(lambda: not self.server_state.tasks)
        for server in self.servers:
            await server.wait_closed()
