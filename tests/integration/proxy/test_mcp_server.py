"""The proxy's MCP server (/mcp and `python -m proxy.mcp`) driven by the real `mcp` client SDK.

The stack is the browser tests' (tests/e2e/browser/uistack.py `run_stack`): the real
manager (process runtime) and two real proxies (one open, one with API keys) on
loopback. The model servers are tests.fixtures.fakevllm processes, which speak vLLM's
and the image server's protocols; `paint` and `slow` take seconds to load, so a
swap is visible. ``img2txt`` uses `look`, fakevllm in vision mode: a stand-in vision
model that answers with the size of the PNG it was sent (no small vision model
installs offline here). The real models (vLLM, diffusers) are in
tests/e2e/test_mcp_real_models.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest
from mcp import MCPError

from tests.e2e.browser.uistack import (
    API_KEY,
    MANAGER_TOKEN,
    Stack,
    fake_entry,
    fake_models,
    run_stack,
)
from tests.mcp_client import (
    INITIALIZE,
    Recorder,
    http_session,
    leaves,
    links,
    pictures,
    png_data_url,
    stdio_session,
    text_of,
)

SLOW_LOAD_S = "20"
"""`slow` loads this long: a cancellation is seen while it is still loading."""


def _models() -> dict:
    models = fake_models(slow_load=SLOW_LOAD_S)
    # Each picture takes 2.5 s, over which the stand-in's GET /v1/progress counts 2 steps.
    models["paint"]["env"]["FAKEVLLM_RESPONSE_DELAY"] = "2.5"
    return {
        **models,
        "look": fake_entry(
            "text",
            vision=True,
            env={"FAKEVLLM_VISION": "1"},
            description="Stand-in vision model (says the size of the picture).",
        ),
        "vec": fake_entry(
            "embedding", description="Stand-in embeddings model (vectors from a hash)."
        ),
    }


@pytest.fixture(scope="module")
def mcp_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with run_stack(tmp_path_factory.mktemp("mcp-stack"), _models(), "chat", name="mcp") as stack:
        yield stack


def _mcp_url(stack: Stack) -> str:
    return stack.auth_proxy_url + "mcp"


async def _waiting(stack: Stack) -> dict[str, tuple[str, int]]:
    """Each model's (state, waiters) at the manager."""
    headers = {"Authorization": f"Bearer {MANAGER_TOKEN}"}
    async with httpx.AsyncClient(headers=headers) as client:
        data = (await client.get(stack.manager_url + "/v1/models")).json()["data"]
    return {m["id"]: (m["state"], m["waiting"]) for m in data}


async def test_tools_and_schemas_follow_models_json(mcp_stack: Stack) -> None:
    async with http_session(_mcp_url(mcp_stack), API_KEY) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) == {
        *("txt2txt", "txt2img", "img2img", "img2txt", "embed", "list_models"),
        *("speech2txt", "txt2speech"),
    }
    models = mcp_stack.models
    text = sorted(n for n, m in models.items() if m["type"] == "text")
    image = sorted(n for n, m in models.items() if m["type"] == "image")
    vision = sorted(n for n, m in models.items() if m.get("vision"))
    assert tools["txt2txt"].input_schema["properties"]["model"]["enum"] == text
    assert tools["img2txt"].input_schema["properties"]["model"]["enum"] == vision == ["look"]
    for name in ("txt2img", "img2img"):
        props = tools[name].input_schema["properties"]
        assert props["model"]["enum"] == image
        assert props["size"]["enum"] == sorted(models["paint"]["sizes"])
        assert props["n"]["maximum"] == models["paint"]["max_n"]
    assert tools["img2img"].input_schema["required"] == ["image", "prompt"]
    # Each model's description reaches the agent.
    assert models["slow"]["description"] in (tools["txt2txt"].description or "")
    assert models["paint"]["description"] in (tools["txt2img"].description or "")


async def test_wrong_key_is_refused_with_a_json_401(mcp_stack: Stack) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.post(
            _mcp_url(mcp_stack),
            json=INITIALIZE,
            headers={"Authorization": "Bearer wrong-key-0123456789", "Accept": "application/json"},
        )
    assert r.status_code == 401
    body = r.json()
    assert "invalid API key" in body["error"]["message"]
    assert body["error"]["data"]["code"] == "invalid_api_key"
    # The SDK's client shows that message.
    with pytest.raises(BaseException) as refused:
        async with http_session(_mcp_url(mcp_stack), "wrong-key-0123456789"):
            pass
    [error] = [e for e in leaves(refused.value) if isinstance(e, MCPError)]
    assert "invalid API key" in error.message
    # The open proxy (no keys configured) serves /mcp without one, and without a redirect.
    async with http_session(mcp_stack.proxy_url + "mcp", None) as session:
        assert (await session.list_tools()).tools


async def test_chat_then_a_swap_to_paint_and_an_edit_with_progress(mcp_stack: Stack) -> None:
    await asyncio.to_thread(mcp_stack.ensure, "chat")
    async with http_session(_mcp_url(mcp_stack), API_KEY) as session:
        chat = await session.call_tool("txt2txt", {"model": "chat", "prompt": "hello there"})
        assert not chat.is_error, text_of(chat)
        assert text_of(chat) == "[chat] hello there"
        assert chat.structured_content["model"] == "chat"

        progress = Recorder()
        made = await session.call_tool(
            "txt2img",
            {"model": "paint", "prompt": "a red square", "size": "128x128", "seed": 7},
            progress_callback=progress,
        )
        assert not made.is_error, text_of(made)
        # The swap was told as it happened, with rising values.
        said = progress.messages
        unloading = said.index("unloading chat to make room for paint")
        loading = next(i for i, m in enumerate(said) if m.startswith("loading paint: "))
        loaded = next(i for i, m in enumerate(said) if m.startswith("loaded paint in "))
        painting = said.index("paint is painting 1 picture(s)")
        assert unloading < loading < loaded < painting, said
        # Then the diffusion steps, as the image server reports them.
        steps = [
            m for m in said[painting:] if m.startswith("paint is painting 1 picture(s): step ")
        ]
        assert steps and steps[-1] == "paint is painting 1 picture(s): step 2 of 2", said
        assert progress.rising(), progress.seen
        assert all(total == 100 for _, total, _ in progress.seen)
        [picture] = pictures(made)
        assert picture.format == "PNG" and picture.size == (128, 128)
        meta = made.structured_content
        assert meta["seed"] == 7 and meta["model"] == "paint" and meta["size"] == "128x128"
        assert meta["timings"]["loaded_s"] is not None and meta["timings"]["waited_s"] > 0
        [url] = links(made)
        assert url == meta["urls"][0] and url.startswith(mcp_stack.auth_proxy_url + "images/")
        async with httpx.AsyncClient() as client:  # no key: image URLs work in <img> tags
            assert (await client.get(url)).content[:8] == b"\x89PNG\r\n\x1a\n"

        edited = await session.call_tool(
            "img2img", {"model": "paint", "image": url, "prompt": "bluer", "size": "64x64"}
        )
        assert not edited.is_error, text_of(edited)
        [picture] = pictures(edited)
        assert picture.size == (64, 64)

        listed = await session.call_tool("list_models", {})
        rows = {r["id"]: r for r in listed.structured_content["models"]}
        assert listed.structured_content["resident"] == ["paint"]
        assert rows["paint"]["usual_load_s"] is not None and rows["look"]["vision"] is True
        assert "loaded now: paint" in text_of(listed)


async def test_img2txt_sends_the_picture_to_the_stand_in_vision_model(mcp_stack: Stack) -> None:
    async with http_session(_mcp_url(mcp_stack), API_KEY) as session:
        seen = await session.call_tool(
            "img2txt", {"image": png_data_url(40, 30), "prompt": "what is this?"}
        )
        assert not seen.is_error, text_of(seen)
        assert text_of(seen) == "[look] what is this? <png image 40x30>"
        # Plain base64 works too, and the model is the only vision model by default.
        raw = png_data_url(12, 10).split(",", 1)[1]
        seen = await session.call_tool("img2txt", {"image": raw, "model": "look"})
        assert text_of(seen) == "[look] Describe this picture. <png image 12x10>"


@pytest.mark.parametrize(
    ("tool", "args", "named"),
    [
        ("txt2img", {"model": "paint", "prompt": "x", "size": "13x13"}, "'size'"),
        ("txt2img", {"model": "paint", "prompt": "x", "n": 5}, "'n'"),
        ("txt2img", {"model": "chat", "prompt": "x"}, "'model'"),
        ("txt2img", {"prompt": "x", "colour": "red"}, "'colour'"),
        ("txt2txt", {"model": "nope", "prompt": "x"}, "'model'"),
        ("txt2txt", {"model": "chat"}, "'prompt'"),
        ("txt2txt", {"messages": [{"role": "robot", "content": "x"}]}, "'messages[0]'"),
        ("txt2txt", {"prompt": "x", "temperature": "hot"}, "'temperature'"),
        ("img2img", {"image": "not base64!", "prompt": "x"}, "'image'"),
        ("img2img", {"image": "https://example.com/a.png", "prompt": "x"}, "'image'"),
        ("img2img", {"image": png_data_url(8, 8), "prompt": "x", "mask": "AAAA"}, "'mask'"),
        ("img2txt", {"model": "chat", "image": png_data_url(8, 8)}, "'model'"),
        # A foreign URL is refused here, never passed on for the model server to fetch.
        ("img2txt", {"image": "https://example.com/a.png"}, "'image'"),
        ("img2txt", {"image": "http://127.0.0.1:9/private/secret.png"}, "'image'"),
        # The direct route's n check (proxy.images.check_image_request): n >= 1.
        ("txt2img", {"model": "paint", "prompt": "x", "n": 0}, "'n'"),
    ],
)
async def test_bad_arguments_give_tool_errors_naming_the_argument(
    mcp_stack: Stack, tool: str, args: dict, named: str
) -> None:
    before = await _waiting(mcp_stack)
    async with http_session(_mcp_url(mcp_stack), API_KEY) as session:
        result = await session.call_tool(tool, args)
    assert result.is_error
    assert f"Invalid argument {named}" in text_of(result), text_of(result)
    # Refused before any lease: no model was started for it.
    assert {k: s for k, (s, _) in (await _waiting(mcp_stack)).items()} == {
        k: s for k, (s, _) in before.items()
    }


@pytest.mark.parametrize(
    "args",
    [{"size": "13x13"}, {"n": 5}, {"n": 0}, {"n": "2"}, {"n": 1.5}, {"size": 64}],
)
async def test_image_limits_are_refused_by_mcp_as_by_the_direct_route(
    mcp_stack: Stack, args: dict
) -> None:
    """One check (proxy.images.check_image_request) at both entries: the same refusal,
    naming the same argument, before any lease."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        direct = await client.post(
            mcp_stack.auth_proxy_url + "v1/images/generations",
            json={"model": "paint", "prompt": "x", **args},
        )
    assert direct.status_code == 400, direct.text
    error = direct.json()["error"]
    async with http_session(_mcp_url(mcp_stack), API_KEY) as session:
        result = await session.call_tool("txt2img", {"model": "paint", "prompt": "x", **args})
    assert result.is_error
    assert f"Invalid argument '{error['param']}': {error['message']}" in text_of(result)


async def test_cancelling_mid_swap_leaves_nothing_queued(mcp_stack: Stack) -> None:
    await asyncio.to_thread(mcp_stack.ensure, "chat")
    async with http_session(_mcp_url(mcp_stack), API_KEY) as session:
        progress = Recorder()
        loading = anyio.Event()

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            await progress(value, total, message)
            if message and message.startswith("loading slow"):
                loading.set()

        async with anyio.create_task_group() as tg:

            async def call() -> None:
                await session.call_tool(
                    "txt2txt", {"model": "slow", "prompt": "hi"}, progress_callback=on_progress
                )

            tg.start_soon(call)
            with anyio.fail_after(60):
                await loading.wait()
            # Mid-swap: slow is loading and this call is the manager's only waiter.
            assert (await _waiting(mcp_stack))["slow"] == ("starting", 1)
            tg.cancel_scope.cancel()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        waiting = await _waiting(mcp_stack)
        if all(n == 0 for _, n in waiting.values()):
            break
        await asyncio.sleep(0.1)
    # Withdrawn while slow was still loading (its load takes 20 s), not served.
    assert waiting["slow"] == ("starting", 0), waiting
    assert all(n == 0 for _, n in waiting.values()), waiting
    await asyncio.to_thread(mcp_stack.stop_all_models)


async def test_stdio_relay_serves_the_same_tools_with_progress(mcp_stack: Stack) -> None:
    await asyncio.to_thread(mcp_stack.stop_all_models)
    async with stdio_session(_mcp_url(mcp_stack), API_KEY) as session:
        names = sorted(t.name for t in (await session.list_tools()).tools)
        assert names == [
            *("embed", "img2img", "img2txt", "list_models", "speech2txt", "txt2img"),
            *("txt2speech", "txt2txt"),
        ]
        assert "txt2img paints" in (session.instructions or "")  # the proxy's, relayed
        progress = Recorder()
        answer = await session.call_tool(
            "txt2txt",
            {"messages": [{"role": "user", "content": "over stdio"}], "max_tokens": 2},
            progress_callback=progress,
        )
        assert not answer.is_error, text_of(answer)
        assert text_of(answer) == "[chat] over"
        assert answer.structured_content["finish_reason"] == "length"
        assert any(m.startswith("loading chat") for m in progress.messages), progress.seen
        bad = await session.call_tool("txt2img", {"prompt": "x", "size": "1x1"})
        assert bad.is_error and "Invalid argument 'size'" in text_of(bad)


async def test_embed_returns_the_vectors_and_their_similarities(mcp_stack: Stack) -> None:
    """The stand-in's vectors come from a hash of each text: the same text twice is the
    same vector (similarity 1), two different texts are not."""
    async with http_session(_mcp_url(mcp_stack), API_KEY) as session:
        texts = ["a lighthouse", "a cat", "a lighthouse"]
        result = await session.call_tool("embed", {"input": texts})
        assert not result.is_error, text_of(result)
        meta = result.structured_content
        assert meta["model"] == "vec" and meta["dimensions"] == 8
        assert [len(v) for v in meta["embeddings"]] == [8, 8, 8]
        sim = meta["similarity"]
        assert sim[0][2] == pytest.approx(1.0) and sim[0][0] == pytest.approx(1.0)
        assert sim[0][1] < 0.99 and sim[1][0] == sim[0][1]
        text = text_of(result)
        assert text.startswith("3 embedding(s) of 8 dimensions from vec.")
        assert "[1] 1.000 " in text and str(meta["embeddings"][0][0]) not in text
        one = await session.call_tool("embed", {"input": "a cat", "model": "vec"})
        assert one.structured_content["embeddings"] == [meta["embeddings"][1]]
        assert "similarity" not in one.structured_content
        wrong = await session.call_tool("embed", {"input": "x", "model": "chat"})
        assert wrong.is_error and "Invalid argument 'model'" in text_of(wrong)
    await asyncio.to_thread(mcp_stack.stop_all_models)


def test_stdio_relay_with_a_wrong_key_exits_with_the_reason(mcp_stack: Stack) -> None:
    import subprocess

    from tests.mcp_client import ROOT

    done = subprocess.run(
        [sys.executable, "-m", "proxy.mcp", "--url", _mcp_url(mcp_stack), "--key", "x" * 20],
        cwd=ROOT,
        input=json.dumps({}).encode(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert b"invalid API key" in done.stderr, done.stderr
