"""The real vLLM CPU build serving the real SmolLM2-135M-Instruct, driven by the real openai SDK.

These pin down what the proxy forwards to and the manager health-checks: the
served name in ``/v1/models``, a non-streamed and a streamed chat answer, and
vLLM's own OpenAI error envelope for an unknown model. The server is launched by the
manager's process-runtime recipe (tests/e2e/conftest.py), so every path it has, not
only ``/v1``, is refused without the upstream key (issue 23).
"""

from __future__ import annotations

import socket

import httpx
import openai
import pytest

from tests.e2e.conftest import QUESTION, refuse_every_vllm_path

pytestmark = pytest.mark.vllm


def test_health_and_models_list_the_served_name(vllm_server, openai_client):
    assert httpx.get(f"{vllm_server.root_url}/health", timeout=10).status_code == 401
    health = httpx.get(f"{vllm_server.root_url}/health", headers=vllm_server.auth, timeout=10)
    assert health.status_code == 200
    ids = [m.id for m in openai_client.models.list().data]
    assert vllm_server.model in ids


def test_chat_completion_returns_text(vllm_server, openai_client):
    reply = openai_client.chat.completions.create(
        model=vllm_server.model, messages=QUESTION, max_tokens=24, temperature=0
    )
    assert reply.model == vllm_server.model
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in {"stop", "length"}
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 24


def test_streamed_chat_completion_arrives_in_pieces(vllm_server, openai_client):
    stream = openai_client.chat.completions.create(
        model=vllm_server.model,
        messages=QUESTION,
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    pieces: list[str] = []
    finish_reasons: list[str] = []
    with stream:
        for chunk in stream:
            assert chunk.object == "chat.completion.chunk"
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                if choice.finish_reason:
                    finish_reasons.append(choice.finish_reason)
    assert len(pieces) > 1, f"expected several content deltas, got {pieces!r}"
    assert "".join(pieces).strip()
    assert finish_reasons and finish_reasons[-1] in {"stop", "length"}


def test_greedy_answers_match_streamed_and_not(vllm_server, openai_client):
    """Streaming changes the transport, not the tokens: at temperature 0 both agree."""
    whole = openai_client.chat.completions.create(
        model=vllm_server.model, messages=QUESTION, max_tokens=16, temperature=0
    )
    stream = openai_client.chat.completions.create(
        model=vllm_server.model, messages=QUESTION, max_tokens=16, temperature=0, stream=True
    )
    with stream:
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == whole.choices[0].message.content


def test_unknown_model_is_an_openai_404(vllm_server, openai_client):
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.chat.completions.create(
            model="no-such-model", messages=QUESTION, max_tokens=4
        )
    assert caught.value.status_code == 404
    assert "no-such-model" in str(caught.value.message)


def test_every_vllm_path_is_refused_without_the_upstream_key(vllm_server):
    """vLLM's own key guards only /v1, /v2, /inference and /cohere; the guard middleware
    the manager launches it with (manager/model_guard.py) closes every path, whatever
    the method, before vLLM routes it: a path a new vLLM adds is listed and checked."""
    paths, refused = refuse_every_vllm_path(vllm_server)
    assert refused == len(paths) * 6


def test_a_websocket_without_the_upstream_key_is_refused(vllm_server):
    """/v1/realtime is a WebSocket: its handshake is refused before vLLM accepts it."""
    with socket.create_connection((vllm_server.host, vllm_server.port), timeout=30) as conn:
        conn.sendall(
            b"GET /v1/realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        status = conn.recv(64).split(b"\r\n", 1)[0]
    assert status.split()[1] == b"403", status
