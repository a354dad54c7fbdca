"""The MCP tools on the real models, through the real `mcp` client SDK.

The stack is the browser tests' real one (tests/e2e/browser/uistack.py: `run_stack` with
`real_models`): the real manager (process runtime) starting real vLLM (CPU build,
SmolLM2-135M-Instruct) and the real diffusers image server (a tiny random-weight
pipeline), behind the real proxy with API keys. One module-scoped stack and one test
for the HTTP path, so vLLM loads as few times as possible (about 40 s each on the
shared 2-core machine): chat (a cold start), a picture (a swap, seen as progress
notifications), the same seed again (the same picture), an edit of that picture by its
URL, a cancellation mid-swap (nothing left queued at the manager), and the stdio relay.

Markers ``vllm`` and ``diffusers``; skips (with the fix) when the vLLM venv, the model or
diffusers is missing. The answers of this run are written to
``test-artifacts/mcp-examples.json`` (docs/mcp.md quotes such a run).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest

from tests.e2e.browser.uistack import (
    API_KEY,
    ARTIFACTS,
    MANAGER_TOKEN,
    Stack,
    real_models,
    run_stack,
)
from tests.mcp_client import Recorder, http_session, links, pictures, stdio_session, text_of

pytestmark = [pytest.mark.vllm, pytest.mark.diffusers]

LOAD_DEADLINE_S = 900.0
"""vLLM loads in about 40 s on an idle machine; this only stops a broken start from hanging."""
QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def real_stack(tmp_path_factory: pytest.TempPathFactory, vllm_runtime, tiny_sd) -> Iterator[Stack]:  # noqa: ANN001
    pytest.importorskip(
        "diffusers", reason="diffusers is not installed (pip install -e '.[image]')"
    )
    workdir = tmp_path_factory.mktemp("mcp-real")
    models, settings = real_models(vllm_runtime, tiny_sd, LOAD_DEADLINE_S)
    with run_stack(workdir, models, "smollm2", name="mcp-real", manager_settings=settings) as stack:
        yield stack


async def _waiting(stack: Stack) -> dict[str, tuple[str, int]]:
    headers = {"Authorization": f"Bearer {MANAGER_TOKEN}"}
    async with httpx.AsyncClient(headers=headers) as client:
        data = (await client.get(stack.manager_url + "/v1/models")).json()["data"]
    return {m["id"]: (m["state"], m["waiting"]) for m in data}


def _example(result) -> dict:  # noqa: ANN001 (a CallToolResult)
    """A result as docs/mcp.md shows it: text, links, inline pictures by size only."""
    content = []
    for c in result.content:
        if c.type == "image":
            content.append(
                {"type": "image", "mime_type": c.mime_type, "data": f"<{len(c.data)} base64 chars>"}
            )
        else:
            content.append(c.model_dump(mode="json", exclude_none=True))
    return {
        "is_error": result.is_error,
        "content": content,
        "structured_content": result.structured_content,
    }


async def test_mcp_tools_chat_paint_edit_cancel_and_relay_on_real_models(real_stack: Stack) -> None:
    url = real_stack.auth_proxy_url + "mcp"
    examples: dict[str, dict] = {}
    async with http_session(url, API_KEY) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert tools["txt2txt"].input_schema["properties"]["model"]["enum"] == ["smollm2"]
        assert tools["txt2img"].input_schema["properties"]["size"]["enum"] == ["128x128", "64x64"]
        # No model in this catalogue takes images: img2txt says so, and refuses.
        assert "none" in (tools["img2txt"].description or "")
        refused = await session.call_tool("img2txt", {"image": "AAAA"})
        assert refused.is_error and "No vision model" in text_of(refused)

        # Chat: a cold start of real vLLM, told as progress.
        chat_progress = Recorder()
        args = {"model": "smollm2", "prompt": QUESTION, "max_tokens": 20, "temperature": 0}
        chat = await session.call_tool("txt2txt", args, progress_callback=chat_progress)
        assert not chat.is_error, text_of(chat)
        assert text_of(chat).strip()
        assert chat.structured_content["timings"]["loaded_s"] > 0
        assert any(m.startswith("loading smollm2: ") for m in chat_progress.messages)
        assert chat_progress.rising(), chat_progress.seen
        examples["txt2txt"] = {
            "arguments": args,
            "progress": chat_progress.messages,
            "result": _example(chat),
        }

        # A picture: vLLM is stopped and the diffusers server started, a real swap.
        paint_progress = Recorder()
        args = {"model": "tiny-sd", "prompt": "a lighthouse at dusk", "size": "64x64", "seed": 42}
        made = await session.call_tool("txt2img", args, progress_callback=paint_progress)
        assert not made.is_error, text_of(made)
        said = paint_progress.messages
        unloading = said.index("unloading smollm2 to make room for tiny-sd")
        loading = next(i for i, m in enumerate(said) if m.startswith("loading tiny-sd: "))
        loaded = next(i for i, m in enumerate(said) if m.startswith("loaded tiny-sd in "))
        assert unloading < loading < loaded, said
        assert paint_progress.rising(), paint_progress.seen
        [picture] = pictures(made)
        assert picture.format == "PNG" and picture.size == (64, 64)
        assert made.structured_content["seed"] == 42
        [picture_url] = links(made)
        examples["txt2img"] = {"arguments": args, "progress": said, "result": _example(made)}

        # The same seed gives the same picture (the seed in the result is the one used).
        again = await session.call_tool("txt2img", args)
        assert again.content[1].data == made.content[1].data

        # An edit of that picture, passed by its proxy URL.
        args = {"model": "tiny-sd", "image": picture_url, "prompt": "in winter", "size": "128x128"}
        edited = await session.call_tool("img2img", args)
        assert not edited.is_error, text_of(edited)
        [picture] = pictures(edited)
        assert picture.size == (128, 128)
        examples["img2img"] = {"arguments": args, "result": _example(edited)}

        listed = await session.call_tool("list_models", {})
        rows = {r["id"]: r for r in listed.structured_content["models"]}
        assert listed.structured_content["resident"] == ["tiny-sd"]
        assert rows["smollm2"]["usual_load_s"] > 0 and rows["tiny-sd"]["usual_load_s"] > 0
        examples["list_models"] = {"arguments": {}, "result": _example(listed)}

        # Cancelled mid-swap (vLLM loading again): nothing stays queued at the manager.
        loading_now = anyio.Event()

        async def watch(value: float, total: float | None, message: str | None) -> None:
            if message and message.startswith("loading smollm2: "):
                loading_now.set()

        async with anyio.create_task_group() as tg:

            async def call() -> None:
                await session.call_tool("txt2txt", {"prompt": "hi"}, progress_callback=watch)

            tg.start_soon(call)
            with anyio.fail_after(LOAD_DEADLINE_S):
                await loading_now.wait()
            assert (await _waiting(real_stack))["smollm2"] == ("starting", 1)
            tg.cancel_scope.cancel()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            waiting = await _waiting(real_stack)
            if all(n == 0 for _, n in waiting.values()):
                break
            await asyncio.sleep(0.2)
        assert all(n == 0 for _, n in waiting.values()), waiting

    # The stdio relay: the same tools, over `python -m proxy.mcp`.
    async with stdio_session(url, API_KEY) as relay:
        names = sorted(t.name for t in (await relay.list_tools()).tools)
        assert names == [
            "embed",
            "img2img",
            "img2txt",
            "list_models",
            "speech2txt",
            "txt2img",
            "txt2speech",
            "txt2txt",
        ]
        listed = await relay.call_tool("list_models", {})
        assert {r["id"] for r in listed.structured_content["models"]} == {"smollm2", "tiny-sd"}

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "mcp-examples.json").write_text(json.dumps(examples, indent=2))
