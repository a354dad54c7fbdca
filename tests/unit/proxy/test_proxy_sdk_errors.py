"""The openai SDK's own exception classes for failures only the fakes can stage:
an upstream dying mid-stream, an upstream 500, a busy manager."""

from __future__ import annotations

import openai
import pytest
from proxy_stack import Stack


def sdk(stack: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=stack.url + "/v1", api_key="unused", max_retries=0, timeout=30
    )


async def test_stream_broken_mid_way_raises_api_error(stack: Stack) -> None:
    stream = await sdk(stack).chat.completions.create(
        model="chat-a", messages=[{"role": "user", "content": "die after two"}], stream=True
    )
    got = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    assert got == ["echo", " die"]
    assert "broke off" in info.value.message
    assert info.value.body["source"] == "model_server"


async def test_upstream_500_raises_internal_server_error(stack: Stack) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        await sdk(stack).chat.completions.create(
            model="chat-a", messages=[{"role": "user", "content": "fail"}]
        )
    assert info.value.status_code == 502
    assert info.value.body["source"] == "model_server"


async def test_busy_manager_raises_rate_limit_error(stack: Stack) -> None:
    stack.manager.busy = True
    with pytest.raises(openai.RateLimitError) as info:
        await sdk(stack).embeddings.create(model="emb", input="x")
    assert info.value.response.headers["retry-after"] == "3"
    assert info.value.body["source"] == "manager"
