"""End to end through the proxy, the real manager and the real Docker engine.

The `openai` SDK talks to the proxy; the proxy takes leases from the real manager
(HTTP API + scheduler + DockerRuntime), which runs `homelab-ai/fakevllm:test`
containers: one text model, and one image model (FAKEVLLM_KIND=image). A chat
for the text model while the image model is resident swaps them, and an image
request swaps back. Docker is checked directly: one model container runs at a
time. Every container this test makes is removed (docker_env).

Ports: 18400-18499 (picked at random among the free ones).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn
from PIL import Image

from manager.runtime import LABEL_MODEL
from proxy.app import create_app
from proxy.settings import ProxySettings
from tests.integration.conftest import (  # noqa: F401 - fixtures used by name
    FAKE_IMAGE,
    SESSION,
    docker_client,
    docker_env,
)
from tests.integration.manager_harness import start_manager
from tests.integration.proxy.proxy_live import free_ports
from tests.uvicorn_server import QuickServer

pytestmark = pytest.mark.docker

TEXT = f"{SESSION}-pxtext"
IMAGE = f"{SESSION}-pximage"


def catalogue(text_port: int, image_port: int) -> dict[str, Any]:
    common = {"image": FAKE_IMAGE, "gpu": False, "start_timeout": 60}
    return {
        TEXT: {
            **common,
            "type": "text",
            "container": TEXT,
            "port": text_port,
            "model": "fake/text",
            "env": {"FAKEVLLM_LOAD_SECONDS": "0.3"},
        },
        IMAGE: {
            **common,
            "type": "image",
            "container": IMAGE,
            "port": image_port,
            "model": "fake/image",
            "device": "cpu",
            "sizes": ["64x64"],
            "max_n": 1,
            "env": {"FAKEVLLM_KIND": "image", "FAKEVLLM_LOAD_SECONDS": "0.3"},
        },
    }


@contextlib.asynccontextmanager
async def serve_proxy(settings: ProxySettings) -> AsyncIterator[str]:
    server = QuickServer(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=settings.proxy_port, log_level="warning"
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the proxy stopped before serving")
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{settings.proxy_port}"
    finally:
        server.should_exit = True
        await task


def running_models(docker: Any) -> set[str]:
    """Models whose container of this session is running, as Docker sees them."""
    return {
        c.labels.get(LABEL_MODEL)
        for c in docker.containers.list(filters={"label": f"{LABEL_MODEL}"})
        if c.labels.get(LABEL_MODEL) in (TEXT, IMAGE)
    }


async def states(sdk: openai.AsyncOpenAI) -> dict[str, str]:
    return {m.id: m.model_dump()["state"] for m in (await sdk.models.list()).data}


async def test_chat_swaps_out_the_image_model_and_an_image_request_swaps_back(
    docker_env: Any,  # noqa: F811 - the imported fixture, requested by name
    tmp_path: Path,
) -> None:
    manager_port, proxy_port, text_port, image_port = free_ports(4)
    manager = await start_manager(catalogue(text_port, image_port), manager_port, tmp_path)
    try:
        settings = ProxySettings(
            manager_url=manager.url,
            manager_token=manager.token,
            proxy_port=proxy_port,
            image_dir=tmp_path / "images",
            jobs_url=str(tmp_path / "jobs.db"),
            api_keys=[],
            public_url=f"http://127.0.0.1:{proxy_port}",
        )
        async with serve_proxy(settings) as url:
            sdk = openai.AsyncOpenAI(
                base_url=url + "/v1", api_key="unused", max_retries=0, timeout=180
            )
            assert await states(sdk) == {TEXT: "stopped", IMAGE: "stopped"}

            # The image model becomes resident.
            image = await sdk.images.generate(model=IMAGE, prompt="a lighthouse", size="64x64")
            png = base64.b64decode(image.data[0].b64_json)
            assert Image.open(io.BytesIO(png)).size == (64, 64)
            assert running_models(docker_env) == {IMAGE}

            # A chat for the text model swaps the image model out.
            chat = await sdk.chat.completions.create(
                model=TEXT, messages=[{"role": "user", "content": "hello"}]
            )
            assert chat.choices[0].message.content == f"[{TEXT}] hello"
            assert running_models(docker_env) == {TEXT}
            now = await states(sdk)
            assert now[TEXT] == "ready" and now[IMAGE] == "stopped"

            # Streaming works through the swapped-in container too.
            stream = await sdk.chat.completions.create(
                model=TEXT, messages=[{"role": "user", "content": "a b c"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == f"[{TEXT}] a b c"

            # And the reverse: an image request swaps the text model out.
            image = await sdk.images.generate(model=IMAGE, prompt="again", response_format="url")
            assert image.data[0].url.startswith(url + "/images/")
            assert running_models(docker_env) == {IMAGE}
            now = await states(sdk)
            assert now[IMAGE] == "ready" and now[TEXT] == "stopped"
    finally:
        await manager.stop()
