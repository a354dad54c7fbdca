"""The standby gate (manager/gate.py), the real program as the Docker runtime runs it
(``python3 -c <file text> <port> <variable> <argv>``), against clients that misbehave:
one deadline bounds a connection's whole handshake (issue 23: a client trickling bytes
after a wrong key held the gate open for as long as it trickled), and connections are
answered side by side, so idle ones never hold up the key.

No timing is asserted: the trickle counts the bytes a connection took before the gate
closed it (a bound far above what the deadline lets through, far below what a gate
without one takes), and a generous outer timeout only keeps a broken gate from hanging
the run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.gate import (
    GUARD_MODULE,
    GUARD_SOURCE_ENV,
    HANDSHAKE_SECONDS,
    MAX_HANDSHAKES,
    RELEASED,
)
from tests import slow_client

GATE_FILE = Path(__file__).resolve().parents[3] / "manager" / "gate.py"
KEY = b"the-gate-key"
TRICKLE_EVERY = 0.1
"""Seconds between a trickler's bytes."""
BOUND = int(5 * HANDSHAKE_SECONDS / TRICKLE_EVERY)
"""Bytes a trickler may get in before the gate cuts it (5x what the deadline lets through)."""
OUTER = 3 * BOUND
"""Bytes after which the trickle gives up: a gate without a deadline never cuts it."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """The real gate on a free port; its server (once released) prints its PYTHONPATH and
    whether it can import the guard module."""
    yield from _run_gate(tmp_path, GATE_FILE.read_text())


@pytest.fixture
def patient_gate(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """The real gate with a handshake deadline of a minute instead of `HANDSHAKE_SECONDS`,
    so that connections a test holds open stay in however slowly it opens them."""
    text = GATE_FILE.read_text()
    line = f"HANDSHAKE_SECONDS = {HANDSHAKE_SECONDS!r}"
    assert line in text
    yield from _run_gate(tmp_path, text.replace(line, "HANDSHAKE_SECONDS = 60.0"))


def _run_gate(tmp_path: Path, text: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = _free_port()
    env = {**os.environ, "GATE_TEST_KEY": KEY.decode(), GUARD_SOURCE_ENV: "GUARDED = True\n"}
    env.pop("PYTHONPATH", None)
    server = [
        sys.executable,
        "-c",
        f"import os, {GUARD_MODULE} as g; print(g.GUARDED, os.environ.get({GUARD_SOURCE_ENV!r}))",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", text, str(port), "GATE_TEST_KEY", *server],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        for _ in range(400):  # until the gate listens
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.025)
        yield port, proc
    finally:
        proc.kill()
        proc.wait()


def trickle(port: int, first: bytes) -> int:
    """Bytes the gate let a client trickle (one every TRICKLE_EVERY s) after `first`."""
    return slow_client.trickle("127.0.0.1", port, first, every=TRICKLE_EVERY, limit=OUTER)


def test_a_client_trickling_after_a_wrong_key_is_cut(
    gate: tuple[int, subprocess.Popen[str]],
) -> None:
    port, _ = gate
    assert trickle(port, b"wrong\n") < BOUND


def test_a_client_trickling_its_line_is_cut(gate: tuple[int, subprocess.Popen[str]]) -> None:
    port, _ = gate
    assert trickle(port, b"w") < BOUND


def test_idle_connections_do_not_hold_up_the_key(gate: tuple[int, subprocess.Popen[str]]) -> None:
    """The key is answered while three silent connections made before it are still open
    (a gate that handles one connection at a time answers it only after cutting them),
    and the released server finds the guard module on its path, the variable gone."""
    port, proc = gate
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(KEY + b"\n")
            assert conn.recv(64) == b"ok\n"
            assert not any(slow_client.answered(c) for c in idle)
    finally:
        for c in idle:
            c.close()
    out, _ = proc.communicate(timeout=30)
    assert out.splitlines() == [RELEASED, "True None"]
    assert proc.returncode == 0


def test_the_key_releases_the_gate_even_if_its_client_never_closes(
    gate: tuple[int, subprocess.Popen[str]],
) -> None:
    """Once the gate said "ok", it becomes the server when the deadline cuts a client that
    keeps the connection open (an ok that did not release would leave the model down)."""
    port, proc = gate
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(KEY + b"\n")
        assert conn.recv(64) == b"ok\n"
        out, _ = proc.communicate(timeout=30)  # the connection is still open here
    assert out.splitlines() == [RELEASED, "True None"]


def _cut(conn: socket.socket) -> bool:
    """Whether the gate has closed `conn` (its end of stream, or a reset), nothing more
    sent."""
    if not slow_client.answered(conn):
        return False
    try:
        return conn.recv(64) == b""
    except OSError:
        return True


@pytest.mark.parametrize("first", [b"", b"wrong\n"], ids=["silent", "answered-no"])
def test_connections_that_fill_the_gate_cannot_lock_the_key_out(
    patient_gate: tuple[int, subprocess.Popen[str]], first: bytes
) -> None:
    """`MAX_HANDSHAKES` connections held open (silent, or told "no" and never closing):
    the key's connection cuts one of them to take its place, so it is answered at once,
    not refused (a full gate used to close every new connection, the manager's too)."""
    port, proc = patient_gate
    held = []
    try:
        for _ in range(MAX_HANDSHAKES):
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            conn.sendall(first)
            held.append(conn)
        if first:
            assert all(c.recv(64) == b"no\n" for c in held)  # all in, all answered
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(KEY + b"\n")
            assert conn.recv(64) == b"ok\n"
        assert any(_cut(c) for c in held)  # the one that made room
    finally:
        for c in held:
            c.close()
    out, _ = proc.communicate(timeout=30)
    assert out.splitlines() == [RELEASED, "True None"]
