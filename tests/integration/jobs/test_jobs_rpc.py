"""JSON-RPC 2.0 at /rpc and SSE at /stream: the real proxy, the real manager (process
runtime), fakevllm model servers, a plain SSE client over httpx."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.integration.jobs.jobs_stack import EMBED, IMAGE, TEXT_A, TEXT_B, JobsStack
from tests.integration.jobs.sse import read_events, rpc

LONG = " ".join(f"w{i}" for i in range(60))
"""A prompt fakevllm echoes word by word: 60 tokens at 0.05 s, about 3 s of streaming."""


def wait_state(client: httpx.Client, task_id: str, states: set[str], timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        task = rpc(client, "tasks.get", {"taskId": task_id})["result"]
        if task["state"] in states:
            return task
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} never reached {states}: {task}")


def test_create_message_streams_state_tokens_result_and_end(jobs_stack: JobsStack) -> None:
    with jobs_stack.client() as client:
        reply = rpc(client, "create_message", {"model": TEXT_A, "message": "hello there friend"})
        assert reply["jsonrpc"] == "2.0" and reply["id"] == 1
        task = reply["result"]
        assert task["state"] == "PENDING" and task["stream"] == f"/stream/{task['taskId']}"
        events = list(read_events(client, task["stream"]))
    stored = [e for e in events if e.id is not None]
    assert [e.id for e in stored] == list(range(1, len(stored) + 1))
    names = [(e.event, e.data.get("state")) for e in stored]
    assert names[0] == ("state", "PENDING")
    assert ("state", "STARTED") in names
    assert names[-3:] == [("result", None), ("state", "SUCCESS"), ("end", "SUCCESS")]
    tokens = "".join(e.data["content"] for e in stored if e.event == "token")
    assert tokens == f"[{TEXT_A}] hello there friend"
    result = next(e.data for e in stored if e.event == "result")
    assert result["text"] == tokens and result["finish_reason"] == "stop"
    with jobs_stack.client() as client:
        got = rpc(client, "tasks.get", {"taskId": task["taskId"]})["result"]
    assert got["state"] == "SUCCESS" and got["result"]["text"] == tokens and got["attempt"] == 1


def post_raw(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post("/rpc", content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("body", "code", "has_id"),
    [
        (b"{not json", -32700, False),
        (b"[]", -32600, False),
        (b"42", -32600, False),
        (b'{"jsonrpc": "1.0", "method": "tasks.list", "id": 5}', -32600, True),
        (b'{"jsonrpc": "2.0", "method": 7, "id": 5}', -32600, True),
        (b'{"jsonrpc": "2.0", "method": "tasks.list", "params": "x", "id": 5}', -32600, True),
        (b'{"jsonrpc": "2.0", "method": "tasks.list", "id": {"a": 1}}', -32600, False),
        (b'{"jsonrpc": "2.0", "method": "tasks.list", "id": true}', -32600, False),
        (b'{"jsonrpc": "2.0", "method": "no.such", "id": 5}', -32601, True),
        (b'{"jsonrpc": "2.0", "method": "tasks.list", "params": [1], "id": 5}', -32602, True),
        (b'{"jsonrpc": "2.0", "method": "create_message", "params": {}, "id": 5}', -32602, True),
        (
            b'{"jsonrpc": "2.0", "method": "create_message", "params": {"model": "jb-a"}, "id": 5}',
            -32602,
            True,
        ),
        (
            b'{"jsonrpc": "2.0", "method": "tasks.list", "params": {"limit": 0}, "id": 5}',
            -32602,
            True,
        ),
        (
            b'{"jsonrpc": "2.0", "method": "tasks.get", "params": {"taskId": "nope"}, "id": 5}',
            -32001,
            True,
        ),
    ],
)
def test_every_protocol_error_is_the_specs(
    jobs_stack: JobsStack, body: bytes, code: int, has_id: bool
) -> None:
    with jobs_stack.client() as client:
        r = post_raw(client, body)
    assert r.status_code == 200
    reply = r.json()
    assert reply["jsonrpc"] == "2.0" and reply["error"]["code"] == code
    assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
    assert reply["id"] == (5 if has_id else None)
    assert "result" not in reply


def test_model_errors_carry_the_openai_error_as_data(jobs_stack: JobsStack) -> None:
    with jobs_stack.client() as client:
        unknown = rpc(client, "create_message", {"model": "gpt-9", "message": "hi"})["error"]
        wrong = rpc(client, "create_image", {"model": TEXT_A, "prompt": "a cat"})["error"]
        size = rpc(client, "create_image", {"model": IMAGE, "prompt": "a cat", "size": "9x9"})[
            "error"
        ]
        clash = rpc(
            client,
            "create_message",
            {"model": TEXT_A, "message": "hi", "options": {"stream": False}},
        )["error"]
    assert unknown["code"] == -32602 and unknown["data"]["code"] == "model_not_found"
    assert TEXT_B in unknown["message"]
    assert wrong["code"] == -32602 and wrong["data"]["code"] == "wrong_model_type"
    assert size["code"] == -32602 and size["data"]["param"] == "size"
    assert clash["code"] == -32602 and clash["data"] == {"param": "options"}


@pytest.mark.parametrize("model", ["m" * 300, "", 7])
def test_a_model_name_is_checked_as_the_direct_routes_check_it(
    jobs_stack: JobsStack, model: object
) -> None:
    """One check (`proxy.parsing.model_name`) at both entries: the same message."""
    with jobs_stack.client() as client:
        error = rpc(client, "create_message", {"model": model, "message": "hi"})["error"]
        direct = client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert direct.status_code == 400, direct.text
    assert error["code"] == -32602 and error["data"]["param"] == "model", error
    assert error["message"] == direct.json()["error"]["message"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"options": {"n": 50}}, "n"),  # max_n is 2
        ({"options": {"size": "9x9"}}, "size"),
        ({"options": {"n": 0}}, "n"),
        ({"options": {"response_format": "jpeg"}}, "response_format"),
        ({"size": "64x64", "options": {"n": 3}}, "n"),
    ],
)
def test_create_image_options_get_the_direct_routes_checks(
    jobs_stack: JobsStack, params: dict, param: str
) -> None:
    """`options` cannot carry n/size past the checks /v1/images/generations applies."""
    with jobs_stack.client() as client:
        error = rpc(client, "create_image", {"model": IMAGE, "prompt": "a cat", **params})["error"]
        direct = client.post(
            "/v1/images/generations",
            json={"model": IMAGE, "prompt": "a cat", **params.get("options", {})},
        )
    assert error["code"] == -32602 and error["data"]["param"] == param, error
    assert direct.status_code == 400 and direct.json()["error"]["param"] == param


def test_batch_calls_and_notifications(jobs_stack: JobsStack) -> None:
    with jobs_stack.client() as client:
        r = client.post(
            "/rpc",
            json=[
                {"jsonrpc": "2.0", "method": "tasks.list", "params": {"limit": 1}, "id": "a"},
                {"jsonrpc": "2.0", "method": "tasks.list"},  # a notification: no reply
                {"jsonrpc": "2.0", "method": "nope", "id": "b"},
                1,
            ],
        )
        assert r.status_code == 200
        replies = r.json()
        assert [x["id"] for x in replies] == ["a", "b", None]
        assert "tasks" in replies[0]["result"]
        assert replies[1]["error"]["code"] == -32601 and replies[2]["error"]["code"] == -32600
        only_notes = client.post("/rpc", json=[{"jsonrpc": "2.0", "method": "tasks.list"}])
        assert only_notes.status_code == 204 and only_notes.content == b""
        one_note = client.post("/rpc", json={"jsonrpc": "2.0", "method": "tasks.list"})
        assert one_note.status_code == 204


def test_rpc_and_stream_need_the_api_key_and_bound_the_body(jobs_stack: JobsStack) -> None:
    url = jobs_stack.proxies["p1"].url
    r = httpx.post(url + "/rpc", json={"jsonrpc": "2.0", "method": "tasks.list", "id": 1})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(url + "/stream/whatever")
    assert r.status_code == 401
    with jobs_stack.client() as client:
        r = client.get("/stream/no-such-task")
        assert r.status_code == 404 and r.json()["error"]["code"] == "task_not_found"
        r = client.get("/stream/no-such-task", headers={"Last-Event-ID": "x"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "Last-Event-ID"


def test_resume_with_last_event_id_loses_and_repeats_nothing(jobs_stack: JobsStack) -> None:
    with jobs_stack.client() as client:
        task = rpc(client, "create_message", {"model": TEXT_B, "message": LONG})["result"]
        first = list(
            read_events(
                client,
                task["stream"],
                stop=lambda e: e.event == "token" and len(e.data["content"]) > 0,
            )
        )
        last_id = max(e.id for e in first if e.id is not None)
        rest = list(read_events(client, task["stream"], last_event_id=last_id))
        full = list(read_events(client, task["stream"]))
    ids = [e.id for e in first + rest if e.id is not None]
    assert ids == sorted(set(ids)) == [e.id for e in full if e.id is not None]
    assert rest[-1].event == "end"
    text = "".join(e.data["content"] for e in first + rest if e.event == "token")
    assert text == f"[{TEXT_B}] {LONG}"


def test_cancel_while_queued_and_while_running(jobs_stack: JobsStack) -> None:
    with jobs_stack.client() as client:
        running = [
            rpc(client, "create_message", {"model": TEXT_A, "message": LONG})["result"]["taskId"]
            for _ in range(2)
        ]  # both workers busy for about 3 s
        queued = rpc(client, "create_message", {"model": TEXT_A, "message": LONG})["result"]
        wait_state(client, running[0], {"STARTED"})
        wait_state(client, running[1], {"STARTED"})
        assert (
            rpc(client, "tasks.get", {"taskId": queued["taskId"]})["result"]["state"] == "PENDING"
        )
        cancelled = rpc(client, "tasks.cancel", {"taskId": queued["taskId"]})["result"]
        assert cancelled["state"] == "CANCELLED"
        events = list(read_events(client, queued["stream"]))
        assert [e.event for e in events if e.id is not None][-2:] == ["state", "end"]
        assert events[-1].data == {"state": "CANCELLED"}
        assert not any(e.data.get("state") == "STARTED" for e in events)

        stopped = rpc(client, "tasks.cancel", {"taskId": running[0]})["result"]
        assert stopped["state"] in {"STARTED", "CANCELLED"}
        final = wait_state(client, running[0], {"CANCELLED", "SUCCESS", "FAILURE"}, timeout=10)
        assert final["state"] == "CANCELLED"
        again = rpc(client, "tasks.cancel", {"taskId": running[0]})["error"]
        assert again["code"] == -32002
        assert wait_state(client, running[1], {"SUCCESS"})["result"]["text"] == f"[{TEXT_A}] {LONG}"


def test_image_job_answers_with_a_proxy_url(jobs_stack: JobsStack) -> None:
    with jobs_stack.client() as client:
        task = rpc(
            client, "create_image", {"model": IMAGE, "prompt": "a lighthouse", "size": "32x48"}
        )["result"]
        events = list(read_events(client, task["stream"]))
        result = next(e.data for e in events if e.event == "result")
        url = result["data"][0]["url"]
        assert url.startswith(jobs_stack.proxies["p1"].url + "/images/")
        png = httpx.get(url)
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_embedding_job_answers_with_the_vectors_and_a_text_model_is_refused(
    jobs_stack: JobsStack,
) -> None:
    with jobs_stack.client() as client:
        task = rpc(client, "create_embedding", {"model": EMBED, "input": ["a", "b"]})["result"]
        events = list(read_events(client, task["stream"]))
        result = next((e.data for e in events if e.event == "result"), None)
        assert result is not None, events
        assert [len(d["embedding"]) for d in result["data"]] == [8, 8]
        refused = rpc(client, "create_embedding", {"model": TEXT_A, "input": "a"})
        assert "result" not in refused
        assert "cannot serve /v1/embeddings" in refused["error"]["message"]


def swaps(client: httpx.Client) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("homelab_proxy_swaps_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_jobs_over_two_models_drain_grouped_by_model(jobs_stack: JobsStack) -> None:
    with jobs_stack.client() as client:
        before = swaps(client)
        ids = [
            rpc(client, "create_completion", {"model": (TEXT_A, TEXT_B)[i % 2], "prompt": f"x{i}"})[
                "result"
            ]["taskId"]
            for i in range(30)
        ]
        for task_id in ids:
            assert wait_state(client, task_id, {"SUCCESS", "FAILURE"})["state"] == "SUCCESS"
        time.sleep(0.5)  # the swap counter follows the manager's event stream
        # Alternating submissions, but at most one swap to each model (not 29).
        assert swaps(client) - before <= 2


def test_an_interactive_request_goes_ahead_of_queued_jobs(jobs_stack: JobsStack) -> None:
    """Jobs for jb-b are draining (0.4 s each, 2 workers) when a client asks jb-a: the
    client is answered while jb-b's jobs still wait, and no jb-b job starts while it
    waits beyond those a worker had already picked (at most the 2 workers)."""
    with jobs_stack.client() as client:
        ids = [
            rpc(client, "create_completion", {"model": TEXT_B, "prompt": f"e{i}"})["result"][
                "taskId"
            ]
            for i in range(16)
        ]
        wait_state(client, ids[0], {"STARTED", "SUCCESS"})
        sent = time.time()
        answer = client.post(
            "/v1/chat/completions",
            json={"model": TEXT_A, "messages": [{"role": "user", "content": "me first"}]},
        )
        answered = time.time()
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == f"[{TEXT_A}] me first"
        tasks = [rpc(client, "tasks.get", {"taskId": i})["result"] for i in ids]
        assert sum(t["state"] == "PENDING" for t in tasks) > 0  # it did not wait for the drain
        overtook = [t for t in tasks if t["started_at"] and sent < t["started_at"] < answered]
        assert len(overtook) <= 2, overtook
        for task_id in ids:
            assert wait_state(client, task_id, {"SUCCESS", "FAILURE"})["state"] == "SUCCESS"
