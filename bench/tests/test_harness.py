"""Checks of the benchmark harness itself: the stand-in upstream, the client, the analysis.

    python -m pytest bench/tests -q

They start the real stand-in upstream on loopback (a free port of 18600-18699, checked
to be answered by the upstream started here) and, when wrk is installed, run it for a
second. No timing is asserted: only that the parts speak HTTP correctly and that the
held-back check can fail (on made-up arrival times; real ones depend on the machine's load).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from bench import httpraw, stack, wrk
from bench.common import percentile, wall_ns
from bench.streaming import analyse


@pytest.fixture(scope="module")
def upstream():
    (port,) = stack.free_ports(1)
    flags = ["--stream-gap-ms", "5", "--enforce-eager", "--max-model-len", "2048"]
    with stack.Stack("harness-test") as st:  # --enforce-eager: a vLLM flag it must ignore
        st.start_upstream("m1", port, flags)  # returns once the port answers as ours
        yield (stack.HOST, port)


def _req(target, method, path, body=None, headers=None):
    return asyncio.run(httpraw.request_once(*target, method, path, body, headers, 10))


def test_upstream_health_and_models(upstream):
    assert _req(upstream, "GET", "/health").status == 200
    models = json.loads(_req(upstream, "GET", "/v1/models").body)
    assert [m["id"] for m in models["data"]] == ["m1"]


def test_upstream_chat_completion(upstream):
    body = json.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}).encode()
    resp = _req(upstream, "POST", "/v1/chat/completions", body)
    assert resp.status == 200
    data = json.loads(resp.body)
    assert data["object"] == "chat.completion"
    assert data["model"] == "m1"
    assert data["choices"][0]["message"]["role"] == "assistant"


def test_upstream_refuses_other_model_and_bad_body(upstream):
    body = json.dumps({"model": "other", "messages": []}).encode()
    resp = _req(upstream, "POST", "/v1/chat/completions", body)
    assert resp.status == 404
    assert json.loads(resp.body)["error"]["code"] == "model_not_found"
    resp = _req(upstream, "POST", "/v1/chat/completions", b"not json")
    assert resp.status == 400
    assert set(json.loads(resp.body)["error"]) == {"message", "type", "param", "code"}


def test_upstream_stream_has_requested_chunks_and_done(upstream):
    body = json.dumps({"model": "m1", "messages": [], "stream": True, "max_tokens": 7}).encode()
    resp = _req(upstream, "POST", "/v1/chat/completions", body)
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    result = analyse(resp, 7)
    assert result["complete"], result
    assert result["chunks"] == 7
    # Not held_back == 0: whether each chunk arrived before the next was sent (5 ms later)
    # is up to the machine's load. The check itself is tested on made-up times below.
    assert len(result["gaps_ms"]) == 6


def test_upstream_answers_pipelined_requests_in_order(upstream):
    one = json.dumps({"model": "m1", "messages": [], "stream": True, "max_tokens": 2}).encode()
    two = json.dumps({"model": "m1", "messages": []}).encode()
    raw = b""
    for body in (one, two):
        raw += b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )
    with socket.create_connection(upstream, timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        deadline = time.monotonic() + 5
        while b'"chat.completion"' not in data and time.monotonic() < deadline:
            data += sock.recv(65536)
    assert data.index(b"data: [DONE]") < data.index(b'"object":"chat.completion"')


def _response_with(events: list[tuple[int, int]]) -> httpraw.Response:
    """A streamed response whose chunk k was sent at events[k][0] and arrived at events[k][1]."""
    resp = httpraw.Response(status=200, sent_ns=0, headers_ns=1, done_ns=10**9)
    for seq, (sent, arrived) in enumerate(events):
        payload = json.dumps({"x_seq": seq, "x_sent_ns": sent}).encode()
        resp.events.append((arrived, b"data: " + payload))
    resp.events.append((10**9, b"data: [DONE]"))
    return resp


def test_held_back_check_passes_for_prompt_delivery():
    gap = 10_000_000
    events = [(k * gap, k * gap + 200_000) for k in range(5)]
    assert analyse(_response_with(events), 5)["held_back"] == 0


def test_held_back_check_fails_for_a_buffering_proxy():
    gap = 10_000_000
    end = 5 * gap
    events = [(k * gap, end) for k in range(5)]  # everything released at the end
    result = analyse(_response_with(events), 5)
    assert result["held_back"] == 4
    assert result["delays_ms"][0] == pytest.approx(50.0)


def test_parser_chunked_sse_split_across_reads():
    resp = httpraw.Response()
    parser = httpraw._Parser(resp)
    wire = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        b"9\r\ndata: a\n\n\r\n"
        b"5\r\ndata:\r\n"
        b"4\r\n b\n\n\r\n"
        b"0\r\n\r\n"
    )
    done = False
    for i in range(0, len(wire), 7):  # arbitrary read boundaries
        done = parser.feed(wire[i : i + 7], i)
    assert done
    assert [e for _, e in resp.events] == [b"data: a", b"data: b"]
    assert resp.body == b"data: a\n\ndata: b\n\n"


def test_parser_content_length_and_keepalive():
    resp = httpraw.Response()
    parser = httpraw._Parser(resp)
    assert not parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", 1)
    assert parser.feed(b"lo", 2)
    assert resp.body == b"hello" and resp.status == 200


def test_percentile_and_wall_clock_parsing():
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([0, 10], 90) == pytest.approx(9.0)
    assert wall_ns("1970-01-01T00:00:01.000000001Z") == 1_000_000_001
    assert wall_ns(1.5) == 1_500_000_000
    assert wall_ns("garbage") is None


@pytest.mark.skipif(not wrk.available(), reason="wrk is not installed")
def test_wrk_runner_counts_requests(upstream, tmp_path):
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "m1", "messages": []}))
    result = wrk.run(f"http://{upstream[0]}:{upstream[1]}/v1/chat/completions", body, 2, 1)
    assert result["requests"] > 0
    assert result["non_2xx"] == 0 and result["socket_errors"] == 0
    assert result["latency_us"]["p50"] <= result["latency_us"]["p99"]


@pytest.mark.skipif(not wrk.available(), reason="wrk is not installed")
def test_wrk_runner_reports_error_statuses(upstream, tmp_path):
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "not-served", "messages": []}))
    result = wrk.run(f"http://{upstream[0]}:{upstream[1]}/v1/chat/completions", body, 1, 1)
    assert result["requests"] > 0
    assert result["non_2xx"] == result["requests"]


def test_slow_sockets_are_held_and_reopened_when_the_server_closes_them():
    """bench.slowclients keeps N sockets open: each the server closes is opened again,
    and its kind, time open and answer are recorded."""
    import asyncio

    from bench.slowclients import KINDS, SlowSockets

    async def scenario() -> SlowSockets:
        async def close_soon(reader, writer):
            await asyncio.sleep(0.2)
            writer.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
            writer.close()

        server = await asyncio.start_server(close_soon, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        slow = SlowSockets("127.0.0.1", port, 3, per_address=2)
        slow.start()
        await asyncio.sleep(1.0)
        await slow.stop()
        server.close()
        return slow

    slow = asyncio.run(scenario())
    for kind in KINDS:
        assert len(slow.closed[kind]) >= 3, slow.closed  # reopened after each close
        assert all(0.15 <= s < 0.6 for s in slow.closed[kind])
        assert slow.answers[kind].get("408", 0) == len(slow.closed[kind])
    assert slow.failed_opens == 0
