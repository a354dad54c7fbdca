"""The proxy's forwarding path against the fake manager and fake model server."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from proxy_stack import Stack


async def test_models_list_reports_type_state_and_image_limits(stack: Stack) -> None:
    r = await stack.client.get("/v1/models")
    assert r.status_code == 200
    data = {m["id"]: m for m in r.json()["data"]}
    assert set(data) == {"chat-a", "chat-b", "img", "emb"}
    assert data["chat-a"]["type"] == "text" and data["chat-a"]["state"] == "stopped"
    assert data["emb"]["type"] == "embedding" and not {"vision", "sizes"} & set(data["emb"])
    assert data["chat-a"]["object"] == "model" and "sizes" not in data["chat-a"]
    assert data["img"]["sizes"] == ["64x64", "32x48"] and data["img"]["max_n"] == 2
    # The manager's other ModelStatus fields pass through for the UI.
    assert {"last_error", "since", "in_flight", "waiting", "description"} <= set(data["chat-a"])


async def test_chat_body_reaches_the_model_server_byte_for_byte(stack: Stack) -> None:
    body = orjson.dumps(
        {
            "model": "chat-a",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "hello"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ],
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}},
            },
            "guided_json": {"type": "object"},
            "unknown_vllm_knob": [1, 2, 3],
        }
    )
    r = await stack.client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo hello"
    path, raw, headers = stack.upstream.requests[-1]
    assert path == "/v1/chat/completions"
    assert raw == body
    assert "authorization" not in {k.lower() for k in headers}


async def test_with_linger_0_every_request_takes_and_releases_its_own_lease(make_stack) -> None:
    async with make_stack(lease_linger=0) as stack:
        for _ in range(3):
            r = await stack.client.post("/v1/completions", json={"model": "chat-a", "prompt": "hi"})
            assert r.status_code == 200
        for _ in range(100):
            if len(stack.manager.released) == 3:
                break
            await asyncio.sleep(0.01)
        assert stack.manager.granted == 3
        assert len(stack.manager.released) == 3
        assert stack.manager.leases == {}


async def test_back_to_back_requests_share_one_lease_released_after_the_linger(
    make_stack,
) -> None:
    async with make_stack(lease_linger=2.0) as stack:
        for _ in range(3):
            r = await stack.client.post("/v1/completions", json={"model": "chat-a", "prompt": "hi"})
            assert r.status_code == 200
        assert stack.manager.granted == 1
        assert len(stack.manager.leases) == 1, "kept for the next request during the linger"
        for _ in range(500):
            if stack.manager.leases == {}:
                break
            await asyncio.sleep(0.01)
        assert stack.manager.released and stack.manager.leases == {}
        assert len(stack.upstream.requests) == 3


async def test_a_contention_event_releases_the_lingering_lease_at_once(make_stack) -> None:
    async with make_stack(lease_linger=30.0) as stack:
        stack.manager.max_uses = 0  # unbounded: nobody else waits
        for _ in range(3):
            r = await stack.client.post("/v1/completions", json={"model": "chat-a", "prompt": "hi"})
            assert r.status_code == 200
        assert stack.manager.granted == 1 and len(stack.manager.leases) == 1
        for _ in range(500):  # the proxy follows the event stream
            if stack.manager.subscribers:
                break
            await asyncio.sleep(0.01)
        stack.manager.publish_contention("chat-b")  # another model: nothing to do
        stack.manager.publish_contention("chat-a")
        for _ in range(500):
            if stack.manager.leases == {}:
                break
            await asyncio.sleep(0.01)
        assert len(stack.manager.released) == 1 and stack.manager.leases == {}
        r = await stack.client.post("/v1/completions", json={"model": "chat-a", "prompt": "hi"})
        assert r.status_code == 200 and stack.manager.granted == 2


async def test_streaming_passes_sse_through_and_ends_with_done(stack: Stack) -> None:
    body = {"model": "chat-a", "stream": True, "messages": [{"role": "user", "content": "one two"}]}
    async with stack.client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        text = (await r.aread()).decode()
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    words = [orjson.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert "".join(words) == "echo one two"


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/chat/completions", {"model": "nope", "messages": []}, 404, "model_not_found"),
        ("/v1/chat/completions", {"model": "img", "messages": []}, 400, "wrong_model_type"),
        ("/v1/images/generations", {"model": "chat-a", "prompt": "x"}, 400, "wrong_model_type"),
        ("/v1/embeddings", {"model": "chat-a", "input": "x"}, 400, "wrong_model_type"),
        ("/v1/chat/completions", {"model": "emb", "messages": []}, 400, "wrong_model_type"),
        ("/v1/completions", {"model": "emb", "prompt": "x"}, 400, "wrong_model_type"),
        (
            "/v1/images/generations",
            {"model": "img", "prompt": "x", "size": "1024x1024"},
            400,
            "invalid_size",
        ),
        ("/v1/images/generations", {"model": "img", "prompt": "x", "n": 3}, 400, "invalid_n"),
        ("/v1/chat/completions", {"messages": []}, 400, "invalid_request"),
        ("/v1/chat/completions", {"model": "chat-a", "stream": "yes"}, 400, "invalid_request"),
    ],
)
async def test_refusals_are_proxy_envelopes(stack: Stack, path, body, status, code) -> None:
    r = await stack.client.post(path, json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == code and err["source"] == "proxy"
    assert set(err) == {"message", "type", "param", "code", "source"}
    assert stack.manager.granted == 0, "a refused request must not take a lease (or cause a swap)"


async def test_embeddings_go_to_the_embedding_model_and_a_text_model_is_told_which(
    stack: Stack,
) -> None:
    """/v1/embeddings routes to type embedding (not text): the body reaches the embedding
    model's server unchanged, and a text model asked for embeddings gets a 400 envelope
    that names the models that do serve it."""
    body = orjson.dumps({"model": "emb", "input": ["a", "b"], "encoding_format": "float"})
    r = await stack.client.post(
        "/v1/embeddings", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200, r.text
    assert [d["index"] for d in r.json()["data"]] == [0, 1]
    assert stack.upstream.requests[-1][:2] == ("/v1/embeddings", body)
    r = await stack.client.post("/v1/embeddings", json={"model": "chat-a", "input": "x"})
    err = r.json()["error"]
    assert (r.status_code, err["code"], err["param"]) == (400, "wrong_model_type", "model")
    assert "'chat-a' is a text model and cannot serve /v1/embeddings" in err["message"]
    assert err["message"].endswith("Models for /v1/embeddings: emb.")
