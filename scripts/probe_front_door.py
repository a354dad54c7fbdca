"""Issue 23's probes against a running proxy (and manager): does the front door hold?

    python -m scripts.probe_front_door --url http://127.0.0.1:8080 --key-file KEYFILE \\
        [--manager-url http://127.0.0.1:8090 --manager-token-file TOKENFILE] [--wait 20]

Each probe is one of the holes issue 23 found, sent again with bounded loops and short
timeouts: idle keyless sockets, a socket that never finishes its headers, a body sent a
byte at a time, a 10 KB JSON-RPC batch of 100 `tasks.list {limit: 1000}`, listings
without a bound, 150 `/stream` connections on one task, `options` in `create_image`
past the n/size checks, MCP `img2txt` with a foreign URL, MCP sessions without a cap,
and (with --manager-url) the manager keeping idle sockets. One line per probe: what it
sent, what came back, and PASS (the door held: the probe failed, as the issue wants) or
FAIL. The exit status is 1 when any probe FAILED.

Every decision is a pure function of what came back (`decide_*`), so
tests/unit/test_probe_front_door.py checks each on recorded answers, and runs the probes
against a stand-in that fails them. The probe creates one task (cancelled at the end) and
opens MCP sessions (deleted at the end); it uploads nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.mcp_client import INITIALIZE, mcp_headers
from tests.tools import connect_from, trickle, until_closed


@dataclass(frozen=True)
class Result:
    """One probe's line: its name, what it sent, what came back, whether the door held."""

    name: str
    sent: str
    got: str
    held: bool

    def line(self) -> str:
        return f"{'PASS' if self.held else 'FAIL'} {self.name}: sent {self.sent}; got {self.got}"


@dataclass(frozen=True)
class Closed:
    """A raw socket's end: the bytes the server sent, and the seconds until it closed the
    connection (None: still open when the probe gave up)."""

    answer: bytes
    after: float | None

    def text(self) -> str:
        status = self.answer.split(b"\r\n", 1)[0].decode(errors="replace") or "no answer"
        when = "still open" if self.after is None else f"closed after {self.after:.1f} s"
        return f"{when} ({status})"


# -- decisions: pure, on what came back ------------------------------------------------


def decide_closed(closes: Sequence[Closed]) -> bool:
    """Held when the server closed every socket before the probe gave up."""
    return bool(closes) and all(c.after is not None for c in closes)


def decide_idle(closes: Sequence[Closed], keyed_ok: int, keyed_other: int) -> bool:
    """Held when every idle socket was closed and the keyed client was answered throughout."""
    return decide_closed(closes) and keyed_ok > 0 and keyed_other == 0


def decide_rpc_batch(status: int, answer: object) -> bool:
    """Held when the whole batch is refused (one -32600 error), not answered call by call."""
    return (
        status == 200
        and isinstance(answer, dict)
        and isinstance(answer.get("error"), dict)
        and answer["error"].get("code") == -32600
    )


def decide_listing(answers: dict[str, tuple[int, object]]) -> bool:
    """Held when every listing asked for more than its bound is refused (HTTP 400 or a
    JSON-RPC -32602), never answered."""
    return bool(answers) and all(_refused(s, a) for s, a in answers.values())


def _refused(status: int, answer: object) -> bool:
    if status == 400:
        return True
    error = answer.get("error") if isinstance(answer, dict) else None
    return isinstance(error, dict) and error.get("code") == -32602


def decide_streams(codes: Sequence[int]) -> bool:
    """Held when some of the streams are refused with 429 and none fail otherwise."""
    return 429 in codes and set(codes) <= {200, 429}


def decide_image_options(errors: dict[str, object]) -> bool:
    """Held when each `create_image` whose `options` break a limit is refused naming it."""
    return bool(errors) and all(
        isinstance(e, dict) and e.get("code") == -32602 and (e.get("data") or {}).get("param") == p
        for p, e in errors.items()
    )


NO_VISION = "No vision model is configured"
"""proxy/mcp/tools.py's refusal when no model takes images: nothing could fetch the URL."""


def decide_img2txt(is_error: bool, text: str, img2img: tuple[bool, str] | None = None) -> bool:
    """Held when the tool refuses the foreign URL as a bad `image` (never fetched). Where
    no vision model is configured, img2txt is refused before its URL is read (nothing
    could fetch it), so the same URL check (`proxy.mcp.picture.read_image`) is asked of
    img2img: held when that refuses it as a bad `image`."""
    if NO_VISION in text and img2img is not None:
        return is_error and _bad_image(*img2img)
    return _bad_image(is_error, text)


def _bad_image(is_error: bool, text: str) -> bool:
    return is_error and "'image'" in text


def decide_mcp_sessions(codes: Sequence[int]) -> bool:
    """Held when a 429 refuses a session before the probe's last try."""
    return 429 in codes


# -- probes ----------------------------------------------------------------------------


@dataclass
class Target:
    url: str
    key: str
    wait: float
    manager_url: str | None = None
    manager_token: str | None = None
    transport: httpx.AsyncBaseTransport | None = None
    """For the unit tests' stand-in; None: the network."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def client(self, max_connections: int = 100) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=max_connections)
        return httpx.AsyncClient(
            base_url=self.url,
            headers=self.headers,
            timeout=30,
            limits=limits,
            transport=self.transport,
        )


def _source(url: str) -> str:
    """The local address to connect from: loopback for a 127/8 server, else any IPv4 one
    (the raw-socket probes speak IPv4: give an address, not a name that may be ::1)."""
    return "127.0.0.1" if "//127." in url else "0.0.0.0"


async def _close_of(url: str, head: bytes, trickled: bytes | None, wait: float) -> Closed:
    """Open a socket to `url`, send `head` (then `trickled` every 0.3 s while it is open),
    and wait up to `wait` s for the server to close it."""
    reader, writer = await connect_from(url, _source(url))
    started = time.monotonic()
    feeding = None
    if trickled is not None:
        feeding = asyncio.create_task(trickle(writer, head, trickled))
    elif head:
        writer.write(head)
    try:
        data, at = await until_closed(reader, wait)
    except TimeoutError:  # until_closed's limit: the server kept it open
        data, at = b"", None
    if feeding:
        feeding.cancel()
    writer.close()
    return Closed(data, None if at is None else at - started)


def _host(url: str) -> bytes:
    return url.split("//", 1)[1].encode()


async def _keyed_loop(
    url: str, headers: dict[str, str], path: str, stop: asyncio.Event
) -> tuple[int, int]:
    """A keyed client asking GET `path` every 0.2 s until `stop`: (answered 200, other)."""
    ok = other = 0
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client:
        while not stop.is_set():
            try:
                r = await client.get(path)
                ok, other = (ok + 1, other) if r.status_code == 200 else (ok, other + 1)
            except httpx.HTTPError:
                other += 1
            await asyncio.sleep(0.2)
    return ok, other


async def _while_keyed(
    url: str, headers: dict[str, str], path: str, sockets: Awaitable[Sequence[Closed]]
) -> tuple[Sequence[Closed], int, int]:
    """The socket closes of `sockets`, and a keyed client's answers while they were open."""
    stop = asyncio.Event()
    asking = asyncio.create_task(_keyed_loop(url, headers, path, stop))
    closes = await sockets
    stop.set()
    ok, other = await asking
    return closes, ok, other


async def probe_idle(t: Target, sockets: int = 10) -> Result:
    opened = asyncio.gather(*(_close_of(t.url, b"", None, t.wait) for _ in range(sockets)))
    closes, ok, other = await _while_keyed(t.url, t.headers, "/v1/models", opened)
    worst = max((c.after or t.wait for c in closes), default=0.0)
    shut = sum(c.after is not None for c in closes)
    return Result(
        "idle keyless sockets",
        f"{sockets} sockets that send nothing, GET /v1/models with the key meanwhile",
        f"{shut}/{sockets} closed (last after {worst:.1f} s); keyed {ok} x 200, {other} other",
        decide_idle(closes, ok, other),
    )


async def _trickled(t: Target, name: str, sent: str, head: bytes, byte: bytes) -> Result:
    closed = await _close_of(t.url, head, byte, t.wait)
    return Result(name, sent, closed.text(), decide_closed([closed]))


async def probe_slow_headers(t: Target) -> Result:
    head = b"GET /healthz HTTP/1.1\r\nHost: " + _host(t.url) + b"\r\nX-Slow: "
    return await _trickled(
        t, "headers never finished", "a GET whose header gets a byte every 0.3 s", head, b"a"
    )


async def probe_slow_body(t: Target) -> Result:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: "
        + _host(t.url)
        + b"\r\nAuthorization: Bearer "
        + t.key.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    )
    sent = "a keyed POST of Content-Length 100000, its body a byte every 0.3 s"
    return await _trickled(t, "body a byte at a time", sent, head, b" ")


async def probe_manager(t: Target) -> Result:
    assert t.manager_url is not None
    head = b"GET /v1/models HTTP/1.1\r\nHost: " + _host(t.manager_url) + b"\r\nX-Slow: "
    opened = asyncio.gather(
        _close_of(t.manager_url, b"", None, t.wait),
        _close_of(t.manager_url, head, b"a", t.wait),
    )
    headers = {"Authorization": f"Bearer {t.manager_token}"} if t.manager_token else {}
    closes, ok, other = await _while_keyed(t.manager_url, headers, "/v1/models", opened)
    silent, slow = closes
    return Result(
        "manager idle sockets",
        "one silent socket and one trickling its headers to the manager"
        + (", GET /v1/models with the token meanwhile" if headers else ""),
        f"silent {silent.text()}, trickling {slow.text()}"
        + (f"; with the token {ok} x 200, {other} other" if headers else ""),
        decide_idle(closes, ok, other) if headers else decide_closed(closes),
    )


def _call(method: str, params: dict, id_: int) -> dict:
    return {"jsonrpc": "2.0", "method": method, "params": params, "id": id_}


async def probe_rpc_batch(t: Target) -> Result:
    body = json.dumps([_call("tasks.list", {"limit": 1000}, i) for i in range(100)]).encode()
    async with t.client() as client:
        started = time.monotonic()
        r = await client.post("/rpc", content=body, headers={"Content-Type": "application/json"})
        took = time.monotonic() - started
    answer = r.json()
    what = answer["error"] if isinstance(answer, dict) and "error" in answer else f"{answer!r:.60}"
    return Result(
        "JSON-RPC batch of 100 tasks.list {limit: 1000}",
        f"{len(body)} bytes",
        f"{r.status_code}, {len(r.content)} bytes in {took:.2f} s: {what}",
        decide_rpc_batch(r.status_code, answer),
    )


async def probe_listing(t: Target) -> Result:
    answers: dict[str, tuple[int, object]] = {}
    async with t.client() as client:
        for path in ("/v1/files?limit=100000", "/v1/batches?limit=100000"):
            r = await client.get(path)
            answers[f"GET {path}"] = (r.status_code, r.json())
        r = await client.post("/rpc", json=_call("tasks.list", {"limit": 100000}, 1))
        answers["tasks.list {limit: 100000}"] = (r.status_code, r.json())
    got = ", ".join(f"{k} -> {_status_text(s, a)}" for k, (s, a) in answers.items())
    return Result(
        "listing without bound",
        "limit=100000 to files, batches, tasks",
        got,
        decide_listing(answers),
    )


def _status_text(status: int, answer: object) -> str:
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):
        return f"{status} {error.get('code')} {error.get('message')!r}"
    return f"{status} (answered)"


async def _models(t: Target) -> dict[str, str]:
    """Each model's id and type, from the proxy's /v1/models."""
    async with t.client() as client:
        r = await client.get("/v1/models")
    return {m["id"]: m.get("type", "") for m in r.json()["data"]}


def _first(models: dict[str, str], kind: str) -> str | None:
    return next((m for m, k in models.items() if k == kind), None)


async def probe_streams(t: Target, streams: int = 150) -> Result:
    model = _first(await _models(t), "text")
    if model is None:
        return Result("150 /stream on one task", "nothing", "no text model to make a task", False)
    async with t.client(max_connections=streams + 8) as client:
        created = await client.post(
            "/rpc", json=_call("create_message", {"model": model, "message": "count to 500"}, 1)
        )
        task = created.json()["result"]
        held: list[httpx.Response] = []
        codes: list[int] = []
        try:
            for _ in range(streams):
                resp = await client.send(client.build_request("GET", task["stream"]), stream=True)
                codes.append(resp.status_code)
                if resp.status_code == 200:
                    held.append(resp)
                else:
                    await resp.aclose()
        finally:
            for resp in held:
                await resp.aclose()
            await client.post("/rpc", json=_call("tasks.cancel", {"taskId": task["taskId"]}, 2))
    return Result(
        "150 /stream on one task",
        f"{streams} streams of one key on one {model} task, each held open",
        f"{codes.count(200)} served, {codes.count(429)} refused 429, "
        f"{len(codes) - codes.count(200) - codes.count(429)} other",
        decide_streams(codes),
    )


async def probe_image_options(t: Target) -> Result:
    model = _first(await _models(t), "image")
    if model is None:
        return Result("create_image options", "nothing", "no image model", False)
    tries = {"n": {"n": 50}, "size": {"size": "9x9"}}
    errors: dict[str, object] = {}
    async with t.client() as client:
        for param, options in tries.items():
            params = {"model": model, "prompt": "a cat", "options": options}
            r = await client.post("/rpc", json=_call("create_image", params, 1))
            answer = r.json()
            errors[param] = answer.get("error", answer.get("result"))
            if "result" in answer:  # a task was made: do not leave it running
                task = answer["result"]["taskId"]
                await client.post("/rpc", json=_call("tasks.cancel", {"taskId": task}, 2))
    got = ", ".join(
        f"{p}: {e.get('code') if isinstance(e, dict) else e}" for p, e in errors.items()
    )
    return Result(
        "create_image options past the n/size checks",
        f"create_image {model} with options n=50, then size=9x9",
        got,
        decide_image_options(errors),
    )


async def probe_img2txt(t: Target) -> Result:
    from mcp.types import CallToolResult, TextContent

    from tests.mcp_client import http_session

    def text_of(result: CallToolResult) -> str:
        return " ".join(c.text for c in result.content if isinstance(c, TextContent))

    foreign = "http://127.0.0.1:9/private/secret.png"
    async with http_session(t.url + "/mcp", t.key) as session:
        tools = {tool.name for tool in (await session.list_tools()).tools}
        if "img2txt" not in tools:
            return Result("MCP img2txt with a foreign URL", "nothing", "no img2txt tool", True)
        result = await session.call_tool("img2txt", {"image": foreign})
        text, sent = text_of(result), f"img2txt image={foreign}"
        got = f"{'tool error' if result.is_error else 'answered'}: {text[:90]!r}"
        edit = None
        if NO_VISION in text and "img2img" in tools:
            other = await session.call_tool("img2img", {"image": foreign, "prompt": "x"})
            edit = (bool(other.is_error), text_of(other))
            sent += ", then img2img with it (no vision model here: the same URL check)"
            got += f"; img2img {'tool error' if other.is_error else 'answered'}: {edit[1][:90]!r}"
    return Result(
        "MCP img2txt with a foreign URL",
        sent,
        got,
        decide_img2txt(bool(result.is_error), text, edit),
    )


async def probe_mcp_sessions(t: Target, most: int = 40) -> Result:
    codes: list[int] = []
    opened: list[str] = []
    async with t.client() as client:
        try:
            while len(codes) < most and 429 not in codes:
                r = await client.post("/mcp", json=INITIALIZE, headers=mcp_headers(t.key))
                codes.append(r.status_code)
                if sid := r.headers.get("mcp-session-id"):
                    opened.append(sid)
        finally:
            for sid in opened:
                with contextlib.suppress(httpx.HTTPError):
                    await client.delete("/mcp", headers=mcp_headers(t.key, sid))
    return Result(
        "MCP sessions without a cap",
        f"up to {most} initialize calls of one key",
        f"{len(opened)} sessions opened, then "
        + (f"{codes[-1]} on try {len(codes)}" if 429 in codes else "no refusal"),
        decide_mcp_sessions(codes),
    )


Probe = Callable[[Target], Awaitable[Result]]

SOCKET_PROBES: tuple[Probe, ...] = (probe_idle, probe_slow_headers, probe_slow_body)
REQUEST_PROBES: tuple[Probe, ...] = (
    probe_rpc_batch,
    probe_listing,
    probe_streams,
    probe_image_options,
    probe_img2txt,
    probe_mcp_sessions,
)


async def _guarded(probe: Probe, t: Target) -> Result:
    """A probe whose own failure (a refused connection, an answer it cannot read) is a FAIL line."""
    try:
        return await probe(t)
    except Exception as exc:  # noqa: BLE001 - any error is the probe's answer, reported
        name = probe.__name__.removeprefix("probe_")
        return Result(name, "-", f"probe error {type(exc).__name__}: {exc}", False)


async def run_all(t: Target) -> list[Result]:
    """The socket probes at once (each waits on a deadline), then the request probes."""
    sockets = list(SOCKET_PROBES) + ([probe_manager] if t.manager_url else [])
    results = list(await asyncio.gather(*(_guarded(p, t) for p in sockets)))
    for probe in REQUEST_PROBES:
        results.append(await _guarded(probe, t))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the proxy, http://host:port")
    parser.add_argument("--key-file", required=True, type=Path, help="a file holding an API key")
    parser.add_argument("--manager-url", help="the manager, http://host:port")
    parser.add_argument("--manager-token-file", type=Path)
    parser.add_argument(
        "--wait", type=float, default=20.0, help="seconds a socket probe waits for a close"
    )
    args = parser.parse_args(argv)
    target = Target(
        url=args.url.rstrip("/"),
        key=args.key_file.read_text().strip(),
        wait=args.wait,
        manager_url=args.manager_url.rstrip("/") if args.manager_url else None,
        manager_token=args.manager_token_file.read_text().strip()
        if args.manager_token_file
        else None,
    )
    results = asyncio.run(run_all(target))
    for r in results:
        print(r.line(), flush=True)
    failed = sum(not r.held for r in results)
    print(f"{len(results) - failed} held, {failed} FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
