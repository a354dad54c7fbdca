"""A client that sends slowly: for the tests of deadlines on our servers' sockets.

`trickle` counts what a server lets a trickling client send before it closes the
connection; a test asserts a bound on that count (far above what the deadline lets
through, far below what no deadline allows), never a duration."""

from __future__ import annotations

import select
import socket
import time


def answered(conn: socket.socket) -> bool:
    """Whether the server has sent anything on `conn` yet: data, its end of stream or a reset."""
    return bool(select.select([conn], [], [], 0)[0])


def _drain(conn: socket.socket) -> None:
    """Read what the server sent (an answer, its end of stream); OSError on a reset."""
    while answered(conn) and conn.recv(64):
        pass


def trickle(host: str, port: int, first: bytes, *, every: float, limit: int) -> int:
    """Send `first`, then one byte every `every` s until the server has closed the
    connection (a send or a read is refused: its socket is gone, not only its sending
    half); the bytes trickled by then, or `limit` when it never closed it."""
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(first)
        for sent in range(limit):
            time.sleep(every)
            try:
                conn.sendall(b"x")
                _drain(conn)
            except OSError:
                return sent
    return limit
