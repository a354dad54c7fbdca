"""scripts/probe_front_door.py can fail: its decisions on recorded answers (the demo's,
and the ones issue 23 found before the fixes), its socket probes against a raw stand-in
server with and without a deadline, and its request probes against a stand-in that
answers as the proxy did before issue 23."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from scripts import probe_front_door as probe
from scripts.probe_front_door import Closed, Target

# -- decisions on recorded answers -----------------------------------------------------

# The demo's answer to the RPC probe (the fix), and the list of 100 answers before it.
REFUSED_BATCH = {
    "jsonrpc": "2.0",
    "id": None,
    "error": {
        "code": -32600,
        "message": "Invalid Request: the batch may return 100000 records, more than 1000",
        "data": {"cap": "MAX_BATCH_RECORDS", "limit": 1000, "work": 100000},
    },
}
ANSWERED_BATCH = [{"jsonrpc": "2.0", "id": i, "result": {"tasks": []}} for i in range(100)]
BAD_LIMIT = {"error": {"message": "'limit' must be 1..1000.", "param": "limit"}}
RPC_BAD_LIMIT = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "limit"}}


def test_socket_decisions() -> None:
    closed, still_open = Closed(b"HTTP/1.1 408 Request Timeout\r\n", 10.0), Closed(b"", None)
    assert probe.decide_closed([closed, Closed(b"", 5.0)])
    assert not probe.decide_closed([closed, still_open])
    assert not probe.decide_closed([])
    assert probe.decide_idle([Closed(b"", 5.0)] * 10, keyed_ok=25, keyed_other=0)
    # Issue 23: ten idle sockets made the keyed client's /healthz answer 503 throughout.
    assert not probe.decide_idle([still_open] * 10, keyed_ok=0, keyed_other=40)
    assert not probe.decide_idle([Closed(b"", 5.0)] * 10, keyed_ok=20, keyed_other=1)


def test_request_decisions() -> None:
    assert probe.decide_rpc_batch(200, REFUSED_BATCH)
    assert not probe.decide_rpc_batch(200, ANSWERED_BATCH)
    assert not probe.decide_rpc_batch(413, {"error": {"code": "too_large"}})
    assert probe.decide_listing({"files": (400, BAD_LIMIT), "tasks": (200, RPC_BAD_LIMIT)})
    assert not probe.decide_listing({"files": (400, BAD_LIMIT), "batches": (200, {"data": []})})
    assert not probe.decide_listing({"tasks": (200, {"result": {"tasks": []}})})
    assert probe.decide_streams([200] * 32 + [429] * 118)
    assert not probe.decide_streams([200] * 150)
    assert not probe.decide_streams([200] * 32 + [429] * 100 + [500] * 18)
    refused = {"code": -32602, "message": "'n' must be 1..2", "data": {"param": "n"}}
    assert probe.decide_image_options({"n": refused})
    assert not probe.decide_image_options({"n": {"taskId": "t1", "stream": "/stream/t1"}})
    assert not probe.decide_image_options({"size": refused})  # refused, but not for size
    assert probe.decide_img2txt(True, "Invalid argument 'image': a data URL or this proxy's")
    no_vision = probe.NO_VISION + ": mark a text model ..."
    bad_image = "Invalid argument 'image': a data URL, base64 or this proxy's image URL"
    assert probe.decide_img2txt(True, no_vision, (True, bad_image))
    assert not probe.decide_img2txt(True, no_vision, (False, "a picture"))
    assert not probe.decide_img2txt(True, no_vision, (True, "the model server could not fetch"))
    assert not probe.decide_img2txt(False, "A picture of a server room.")
    assert not probe.decide_img2txt(True, "the model server could not fetch the image")
    assert probe.decide_mcp_sessions([200] * 16 + [429])
    assert not probe.decide_mcp_sessions([200] * 40)


# -- socket probes against a raw stand-in ------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@contextlib.asynccontextmanager
async def stand_in(deadline: float | None) -> AsyncIterator[str]:
    """A raw HTTP server on loopback that answers each complete request (headers, then its
    Content-Length of body) with 200; with `deadline`, a connection that has not completed
    a request in that time is closed (as our servers do), without it never (as uvicorn did)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def one_request() -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)

        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            while True:
                if deadline is None:
                    await one_request()
                else:
                    async with asyncio.timeout(deadline):
                        await one_request()
                writer.write(OK)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("deadline", [None, 0.5])
def test_socket_probes_fail_without_a_deadline_and_pass_with_one(deadline: float | None) -> None:
    async def run() -> list[probe.Result]:
        async with stand_in(deadline) as url:
            t = Target(url=url, key="k", wait=2.0, manager_url=url)
            return list(
                await asyncio.gather(
                    probe.probe_idle(t, sockets=3),
                    probe.probe_slow_headers(t),
                    probe.probe_slow_body(t),
                    probe.probe_manager(t),
                )
            )

    results = asyncio.run(run())
    assert [r.held for r in results] == [deadline is not None] * 4, [r.line() for r in results]
    if deadline is None:
        # Each socket the probes opened was still open when they gave up.
        assert "0/3 closed" in results[0].got
        assert all("still open" in r.got for r in results[1:]), [r.got for r in results]


# -- request probes against a stand-in of the proxy before issue 23 ------------------------


def before_issue_23(request: httpx.Request) -> httpx.Response:
    """Answers as the proxy did: every batch call run, any listing limit taken, every
    stream and MCP session served, `options` taken past the image checks."""
    path = request.url.path
    if path == "/v1/models":
        return httpx.Response(
            200, json={"data": [{"id": "chat", "type": "text"}, {"id": "paint", "type": "image"}]}
        )
    if path in ("/v1/files", "/v1/batches"):
        return httpx.Response(200, json={"object": "list", "data": []})
    if path.startswith("/stream/"):
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=b"")
    if path == "/mcp":
        return httpx.Response(200, headers={"mcp-session-id": "s"}, json={"result": {}})
    calls = json.loads(request.content)
    task = {"taskId": "t1", "stream": "/stream/t1", "tasks": []}
    if isinstance(calls, list):
        return httpx.Response(200, json=[{"id": c["id"], "result": task} for c in calls])
    return httpx.Response(200, json={"jsonrpc": "2.0", "id": calls["id"], "result": task})


@pytest.mark.parametrize(
    "run",
    [
        probe.probe_rpc_batch,
        probe.probe_listing,
        probe.probe_streams,
        probe.probe_image_options,
        probe.probe_mcp_sessions,
    ],
)
def test_request_probes_fail_against_the_proxy_before_issue_23(run: probe.Probe) -> None:
    t = Target(
        url="http://proxy", key="k", wait=1.0, transport=httpx.MockTransport(before_issue_23)
    )
    result = asyncio.run(run(t))
    assert not result.held, result.line()
    assert result.line().startswith("FAIL ")


def test_main_exits_non_zero_on_a_fail(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys) -> None:
    async def fake_run_all(t: Target) -> list[probe.Result]:
        return [probe.Result("a", "x", "y", True), probe.Result("b", "x", "y", False)]

    monkeypatch.setattr(probe, "run_all", fake_run_all)
    key = tmp_path / "key"
    key.write_text("k\n")
    assert probe.main(["--url", "http://proxy", "--key-file", str(key)]) == 1
    out = capsys.readouterr().out
    assert "PASS a:" in out and "FAIL b:" in out and "1 held, 1 FAILED" in out
