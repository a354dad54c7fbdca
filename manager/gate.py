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

Connections are handled side by side, each within one deadline for its whole
handshake (`HANDSHAKE_SECONDS`: reading the line, answering, waiting for the client to
close): a client that sends nothing, or trickles bytes before or after its line, is
cut when the deadline passes, and never delays another connection (the manager's
release above all). A connection that got "ok" releases the gate when it closes or is
cut, whichever comes first. At most `MAX_HANDSHAKES` run at once; a new connection
beyond them cuts an older one to take its place (one already answered "no" first, else
the oldest), so clients that keep the gate's connections full cannot lock the
manager's release out: its connection says its line within milliseconds of connecting,
and would have to be pushed out by `MAX_HANDSHAKES` newer ones in that time.

Before the `execvp`, when the container's environment carries `GUARD_SOURCE_ENV` (the
Docker runtime sets it for vLLM: `manager.model_guard`), the gate writes that text as
the module `homelab_model_guard` into a fresh private folder, puts the folder first on
`PYTHONPATH` and drops the variable, so vLLM's ``--middleware
homelab_model_guard.ModelGuard`` finds it.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import signal
import sys
import tempfile

RELEASED = "homelab-ai gate: released"
"""The gate's one line of output, printed just before it becomes the server."""
HANDSHAKE_SECONDS = 2.0
"""The deadline of one connection's whole handshake, from accept to close."""
MAX_HANDSHAKES = 64
"""Connections handled at once; one more cuts an older one (module docstring)."""
LINE_LIMIT = 512
"""Bytes of a line the gate reads at most (a longer line is a wrong one)."""
GUARD_SOURCE_ENV = "GATE_GUARD_SOURCE"
"""The variable whose text the gate writes as the module `GUARD_MODULE` before the exec
(not a ``HOMELAB_*`` name: model containers carry none of the manager's variables)."""
GUARD_MODULE = "homelab_model_guard"


class _Conn:
    """One connection in its handshake: `answered` once the gate said "ok" or "no"."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.answered = False
        self.sent_ok = False


async def _exchange(reader: asyncio.StreamReader, conn: _Conn, key: bytes) -> None:
    """Read the first line, answer "ok" (setting `conn.sent_ok`) or "no", wait for the
    client to close."""
    writer = conn.writer
    data = b""
    while b"\n" not in data and len(data) < LINE_LIMIT:
        chunk = await reader.read(LINE_LIMIT)
        if not chunk:
            break
        data += chunk
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if key and hmac.compare_digest(line, key):
        conn.sent_ok = True
        writer.write(b"ok\n")
    else:
        writer.write(b"no\n")
    conn.answered = True
    await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    while await reader.read(LINE_LIMIT):  # until the client closes (bounded by the deadline)
        pass


async def _serve(port: int, key: bytes) -> None:
    """Answer connections on `port` until one sends `key` (never, for an empty key)."""
    loop = asyncio.get_event_loop()
    released = loop.create_future()
    active: list[_Conn] = []  # oldest first

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(active) >= MAX_HANDSHAKES:  # cut one to make room (module docstring)
            victim = next((c for c in active if c.answered), active[0])
            active.remove(victim)
            victim.writer.transport.abort()
        conn = _Conn(writer)
        active.append(conn)
        try:
            await asyncio.wait_for(_exchange(reader, conn, key), HANDSHAKE_SECONDS)
        except (asyncio.TimeoutError, OSError):  # noqa: UP041 (Python 3.8: not TimeoutError)
            writer.transport.abort()  # cut: no FIN handshake to wait for
        finally:
            if conn in active:
                active.remove(conn)
            writer.close()
        if conn.sent_ok and not released.done():  # released once "ok" is said, closed or cut
            released.set_result(None)

    server = await asyncio.start_server(handle, "0.0.0.0", port, reuse_address=True, backlog=16)
    await released
    server.close()


def _install_guard(env: dict[str, str]) -> None:
    """Write `env[GUARD_SOURCE_ENV]` as `GUARD_MODULE` and put its folder first on PYTHONPATH."""
    source = env.pop(GUARD_SOURCE_ENV, None)
    if not source:
        return
    folder = tempfile.mkdtemp(prefix="homelab-guard-")
    with open(os.path.join(folder, GUARD_MODULE + ".py"), "w", encoding="utf-8") as f:
        f.write(source)
    rest = env.get("PYTHONPATH")
    env["PYTHONPATH"] = folder + (os.pathsep + rest if rest else "")


def main(args: list[str]) -> None:
    """`args`: the port, the name of the key variable, then the server's argv."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port, variable, argv = int(args[0]), args[1], args[2:]
    loop = asyncio.new_event_loop()
    loop.run_until_complete(_serve(port, os.environ.get(variable, "").encode()))
    print(RELEASED, flush=True)
    env = dict(os.environ)
    _install_guard(env)
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":  # `python3 -c <this file> ...`: argv[0] is "-c"
    main(sys.argv[1:])
