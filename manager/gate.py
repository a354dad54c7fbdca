"""The standby gate: PID 1 of every container `manager.docker_runtime.DockerRuntime` creates.

A program, not a module to import for its work: the Docker runtime reads this file's
text when it is loaded (`manager.docker_runtime.GATE`) and runs it in the model's
container as ``python3 -c <this file> <port> <key variable> <server argv...>``. So it
uses the standard library only and runs on any Python 3.8 or later (whatever
``python3`` the model's image has: vLLM's, the image server's, dockerfiles/llamacpp.Dockerfile's).

It listens on the model's internal port and waits for one line equal to the value of
the container's upstream-key variable; it answers any other line "no" and keeps
waiting, and on the key answers "ok", closes its socket (the client closes first, so the
port is left without TIME_WAIT sockets), prints `RELEASED` and `execvp`s the server
argv. It holds no GPU memory while it waits. SIGTERM ends it at once (PID 1 ignores
signals it has no handler for).
"""

from __future__ import annotations

import hmac
import os
import signal
import socket
import sys

RELEASED = "homelab-ai gate: released"
"""The gate's one line of output, printed just before it becomes the server."""


def _first_line(conn: socket.socket) -> bytes:
    """The first line the client sends (at most 512 bytes, without its line end)."""
    conn.settimeout(2.0)
    data = b""
    while b"\n" not in data and len(data) < 512:
        chunk = conn.recv(512)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].rstrip(b"\r")


def wait_for_key(port: int, key: bytes) -> None:
    """Answer connections on `port` until one sends `key` (never, for an empty key)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(16)
    released = False
    while not released:
        conn = srv.accept()[0]
        try:
            released = bool(key) and hmac.compare_digest(_first_line(conn), key)
            conn.sendall(b"ok\n" if released else b"no\n")
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(512):
                pass
        except OSError:
            pass
        finally:
            conn.close()
    srv.close()


def main(args: list[str]) -> None:
    """`args`: the port, the name of the key variable, then the server's argv."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port, variable, argv = int(args[0]), args[1], args[2:]
    wait_for_key(port, os.environ.get(variable, "").encode())
    print(RELEASED, flush=True)
    os.execvp(argv[0], argv)


if __name__ == "__main__":  # `python3 -c <this file> ...`: argv[0] is "-c"
    main(sys.argv[1:])
