"""A fast stand-in for a vLLM OpenAI server, so a benchmark measures the gateway, not the model.

Standalone on purpose (stdlib, plus uvloop when installed): the manager's process
runtime launches it from a models.json ``command`` as ``python bench/upstream.py``,
appending vLLM's own arguments, so it accepts ``--served-model-name``, ``--host``,
``--port`` and ``--model`` and ignores every other vLLM flag.

What it serves, over HTTP/1.1 with keep-alive (one asyncio ``Protocol`` per
connection, no framework, so its own cost per request is a few tens of microseconds):

- ``GET /health``: 200, empty body (what vLLM answers once loaded).
- ``GET /v1/models``: the served name, in vLLM's shape.
- ``POST /v1/chat/completions``: a fixed ``chat.completion`` body; with
  ``"stream": true`` a ``text/event-stream`` of ``--stream-chunks`` (or the request's
  ``max_tokens``) ``chat.completion.chunk`` events, ``--stream-gap-ms`` apart, then
  ``data: [DONE]``. Every chunk carries ``"x_sent_ns"``, the server's
  ``time.monotonic_ns()`` when it wrote that chunk (CLOCK_MONOTONIC is shared by all
  processes on a Linux machine), so a client on the same machine can tell how long
  each chunk spent in between.
- Anything else: an OpenAI error envelope with 404/405/400.

``--startup-delay S`` keeps the port closed for S seconds first, like vLLM loading
weights (connections are refused, which the manager's probe reads as "loading").
``--pidfile`` writes the process id so a benchmark can account its CPU and clean up.
SIGTERM and SIGINT end it at once with status 0.

Not a test double for correctness (tests/fixtures/fakevllm is that); it only needs
to be fast and to speak the same wire format.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

MAX_HEADER = 64 * 1024
MAX_BODY = 4 * 1024 * 1024

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
}


def _error_body(status: int, message: str, code: str) -> bytes:
    return json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        },
        separators=(",", ":"),
    ).encode()


class Config:
    """Everything a connection needs, prebuilt once: the hot path only concatenates bytes."""

    def __init__(
        self, served: str, model: str, chunks: int, gap_ms: float, first_ms: float
    ) -> None:
        self.served = served
        self.chunks = chunks
        self.gap = gap_ms / 1000.0
        self.first = first_ms / 1000.0
        created = int(time.time())
        models = {
            "object": "list",
            "data": [
                {
                    "id": served,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": model,
                    "parent": None,
                    "max_model_len": 2048,
                }
            ],
        }
        self.models_response = _response(200, "application/json", json.dumps(models).encode())
        self.health_response = _response(200, None, b"")
        completion = {
            "id": "chatcmpl-bench0000000000000000",
            "object": "chat.completion",
            "created": created,
            "model": served,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                    "logprobs": None,
                    "finish_reason": "stop",
                    "stop_reason": None,
                }
            ],
            "usage": {"prompt_tokens": 12, "total_tokens": 19, "completion_tokens": 7},
        }
        self.completion_body = json.dumps(completion, separators=(",", ":")).encode()
        self.completion_response = _response(200, "application/json", self.completion_body)
        self.chunk_prefix = (
            '{"id":"chatcmpl-bench0000000000000000","object":"chat.completion.chunk",'
            f'"created":{created},"model":{json.dumps(served)},"choices":[{{"index":0,'
            '"delta":{"content":"tok "},"logprobs":null,"finish_reason":null}],"x_seq":'
        )


def _response(status: int, content_type: str | None, body: bytes, extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-length: {len(body)}\r\n"
    if content_type:
        head += f"content-type: {content_type}\r\n"
    return (head + extra + "\r\n").encode() + body


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection. Requests are answered in order; pipelining works."""

    def __init__(self, config: Config) -> None:
        self.cfg = config
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.Task | None = None
        self.pending: list[tuple[bytes, bytes, dict[bytes, bytes], bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEADER:
                    self._fail(400, "request header too large", "header_too_large")
                return
            head = bytes(self.buf[:end])
            lines = head.split(b"\r\n")
            try:
                method, target, _version = lines[0].split(b" ", 2)
            except ValueError:
                self._fail(400, "malformed request line", "bad_request")
                return
            headers: dict[bytes, bytes] = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            try:
                length = int(headers.get(b"content-length", b"0"))
            except ValueError:
                self._fail(400, "bad content-length", "bad_request")
                return
            if length > MAX_BODY:
                self._fail(413, "request body too large", "body_too_large")
                return
            if headers.get(b"transfer-encoding"):
                self._fail(400, "chunked request bodies are not supported", "bad_request")
                return
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            request = (method, target, headers, body)
            if self.streaming is not None:
                self.pending.append(request)
            else:
                self._handle(*request)
            if self.transport is None:
                return

    def _fail(self, status: int, message: str, code: str) -> None:
        if self.transport is not None:
            self.transport.write(
                _response(
                    status,
                    "application/json",
                    _error_body(status, message, code),
                    "connection: close\r\n",
                )
            )
            self.transport.close()
        self.buf.clear()

    def _handle(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> None:
        transport = self.transport
        if transport is None:
            return
        path = target.split(b"?", 1)[0]
        cfg = self.cfg
        if path == b"/v1/chat/completions":
            if method != b"POST":
                out = _response(
                    405, "application/json", _error_body(405, "use POST", "method_not_allowed")
                )
            else:
                try:
                    req = json.loads(body)
                except ValueError:
                    req = None
                if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
                    out = _response(
                        400,
                        "application/json",
                        _error_body(400, "body must be a JSON object with messages", "bad_request"),
                    )
                elif req.get("model") != cfg.served:
                    msg = f"The model `{req.get('model')}` does not exist."
                    out = _response(
                        404, "application/json", _error_body(404, msg, "model_not_found")
                    )
                elif req.get("stream") is True:
                    chunks = req.get("max_tokens")
                    if not isinstance(chunks, int) or chunks < 1:
                        chunks = cfg.chunks
                    self.streaming = asyncio.get_running_loop().create_task(
                        self._stream(min(chunks, 100_000))
                    )
                    return
                else:
                    out = cfg.completion_response
        elif path == b"/health":
            out = cfg.health_response
        elif path == b"/v1/models":
            out = cfg.models_response
        else:
            out = _response(
                404,
                "application/json",
                _error_body(404, f"no route {path.decode(errors='replace')}", "not_found"),
            )
        transport.write(out)
        if headers.get(b"connection", b"").lower() == b"close":
            transport.close()

    async def _stream(self, chunks: int) -> None:
        cfg = self.cfg
        try:
            transport = self.transport
            if transport is None:
                return
            transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            if cfg.first > 0:
                await asyncio.sleep(cfg.first)
            for seq in range(chunks):
                if seq and cfg.gap > 0:
                    await asyncio.sleep(cfg.gap)
                if self.transport is None:
                    return
                event = f'data: {cfg.chunk_prefix}{seq},"x_sent_ns":{time.monotonic_ns()}}}\n\n'.encode()
                self.transport.write(b"%x\r\n%s\r\n" % (len(event), event))
            if self.transport is None:
                return
            done = b"data: [DONE]\n\n"
            self.transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
        finally:
            self.streaming = None
        while self.pending and self.streaming is None and self.transport is not None:
            self._handle(*self.pending.pop(0))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18600)
    parser.add_argument("--model", default="bench/upstream")
    parser.add_argument("--served-model-name", default=None, help="defaults to --model, as in vLLM")
    parser.add_argument("--stream-chunks", type=int, default=20)
    parser.add_argument("--stream-gap-ms", type=float, default=10.0)
    parser.add_argument(
        "--first-chunk-ms", type=float, default=0.0, help="delay before the first chunk"
    )
    parser.add_argument(
        "--startup-delay", type=float, default=0.0, help="seconds with the port closed first"
    )
    parser.add_argument("--pidfile", default=None)
    parser.add_argument("--no-uvloop", action="store_true")
    args, _ignored = parser.parse_known_args(argv)  # vLLM flags we do not implement
    return args


async def serve(args: argparse.Namespace) -> None:
    served = args.served_model_name or args.model
    cfg = Config(served, args.model, args.stream_chunks, args.stream_gap_ms, args.first_chunk_ms)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.startup_delay > 0:
        try:
            await asyncio.wait_for(stop.wait(), args.startup_delay)
            return
        except TimeoutError:
            pass
    server = await loop.create_server(
        lambda: UpstreamProtocol(cfg), args.host, args.port, reuse_address=True, backlog=1024
    )
    print(
        f"bench upstream: serving {served!r} on http://{args.host}:{args.port} (pid {os.getpid()})",
        flush=True,
    )
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pidfile:
        with open(args.pidfile, "w", encoding="ascii") as fh:
            fh.write(str(os.getpid()))
    runner = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    try:
        runner(serve(args))
    except OSError as exc:
        print(f"bench upstream: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
