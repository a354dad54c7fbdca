"""200 browsers on /api/events cost the manager one connection (issue 13).

Before, every /api/events client opened its own stream to the manager, unbounded, so
a crowd of browsers could run the manager out of descriptors (and with them its
leases and Docker calls). The manager's connections are counted by the kernel
(/proc/net/tcp{,6}: established sockets on the manager's port), not by our code.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxy_live import LiveStack

from tests.tools import connect_from

CLIENTS = 200
ESTABLISHED = "01"


def manager_connections(port: int) -> int:
    """Established TCP connections whose local end is `port` (the manager's side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        lines = Path(table).read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == ESTABLISHED:
                count += 1
    return count


async def open_stream(host: str, port: int, key: str, n: int) -> asyncio.StreamWriter:
    # 50 browsers per client address: the proxy takes at most 128 from one
    # (HOMELAB_PROXY_MAX_CONNECTIONS_PER_ADDRESS)
    reader, writer = await connect_from(f"http://{host}:{port}", f"127.0.1.{n // 50 + 1}")
    writer.write(
        (
            f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert head.startswith(b"HTTP/1.1 200"), head
    await asyncio.wait_for(reader.readuntil(b"event: snapshot"), 30)
    return writer


def test_two_hundred_event_clients_share_one_manager_connection(live_stack: LiveStack) -> None:
    host, port = live_stack.proxy_url.removeprefix("http://").split(":")
    manager_port = int(live_stack.manager_url.rsplit(":", 1)[1])

    async def crowd() -> tuple[int, int]:
        before = manager_connections(manager_port)
        writers = await asyncio.gather(
            *(open_stream(host, int(port), live_stack.api_key, n) for n in range(CLIENTS))
        )
        during = manager_connections(manager_port)
        for writer in writers:
            writer.close()
        return before, during

    before, during = asyncio.run(crowd())
    # The proxy's one event stream, plus at most a few pooled connections for leases
    # and model lists (the same before and during).
    assert during <= before + 1, (before, during)
    assert during < 10, during
