"""The manager's ProcessRuntime + HttpReadinessProbe driving the real image server process.

What the one-machine demo and a GPU box without Docker do: the manager starts
`python -m imageserver` with the `HOMELAB_IMAGE_*` environment it derives from
an ImageModel spec, waits for `/health` to say ready (or failed, with the
reason), uses it with the per-start upstream key it made (the real server refuses
`/v1` without it), and stops it. Marker `diffusers`. Every test stops what it
started; the fixture also stops anything left in the runtime's registry.
"""

from __future__ import annotations

import base64
import io
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from manager.errors import StartFailed
from manager.health import HttpReadinessProbe
from manager.process_runtime import ProcessRuntime
from manager.settings import ManagerSettings
from manager.spec import ImageModel
from tests.integration.conftest import model_name, token, upstream_auth

from .conftest import free_port

pytestmark = pytest.mark.diffusers


def spec_for(model: Path, suffix: str, **fields: object) -> ImageModel:
    values: dict[str, object] = {
        "type": "image",
        "container": model_name(suffix),
        "port": free_port(),
        "image": "homelab-ai/imageserver:test",
        "model": str(model),
        "gpu": False,
        "device": "cpu",
        "dtype": "fp32",
        "sizes": ["64x64", "128x64"],
        "max_n": 2,
        "steps": 2,
        "start_timeout": 300,
        "env": {"HF_HUB_OFFLINE": "1"},
    }
    values.update(fields)
    return ImageModel(**values)


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    settings = ManagerSettings(
        manager_token=token(),
        log_dir=tmp_path / "logs",
        model_host="127.0.0.1",
        imageserver_python=sys.executable,
    )
    rt = ProcessRuntime(settings)
    try:
        yield rt
    finally:
        for instance in await rt.list_owned():
            await rt.stop(instance.model, None, timeout=10)


@pytest.fixture
async def probe() -> AsyncIterator[HttpReadinessProbe]:
    async with HttpReadinessProbe(first_delay=0.2, max_interval=1.0) as p:
        yield p


async def test_the_manager_starts_checks_uses_and_stops_the_image_server(
    tiny_pipeline: Path, runtime: ProcessRuntime, probe: HttpReadinessProbe
) -> None:
    name = model_name("img")
    spec = spec_for(tiny_pipeline, "img")
    await runtime.start(name, spec)
    await probe.wait_ready(name, spec, runtime)
    assert await probe.check_alive(name, spec, runtime) is None

    auth = await upstream_auth(runtime, name, spec)
    async with httpx.AsyncClient(
        base_url=runtime.base_url(spec), trust_env=False, timeout=120
    ) as stranger:
        # The real server refuses every path without this start's key (or with another),
        # in an envelope, /health and its OpenAPI document too (issue 23; the probe sends it).
        wrong = {"Authorization": auth["Authorization"][:-1] + "x"}
        for headers in ({}, wrong, {"Authorization": auth["Authorization"].split()[1]}):
            for method, path in (
                ("GET", "/v1/models"),
                ("POST", "/v1/images/generations"),
                ("GET", "/health"),
                ("GET", "/openapi.json"),
                ("GET", "/docs"),
            ):
                body = {"model": name, "prompt": "a kite", "size": "64x64"}
                r = await stranger.request(
                    method, path, json=body if method == "POST" else None, headers=headers
                )
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers["WWW-Authenticate"] == "Bearer"
                error = r.json()["error"]
                assert error["code"] == "invalid_api_key" and error["source"] == "model_server"
                assert set(error) >= {"message", "type", "param", "code"}
    async with httpx.AsyncClient(
        base_url=runtime.base_url(spec), headers=auth, trust_env=False, timeout=120
    ) as client:
        health = (await client.get("/health")).json()
        assert health.pop("loaded")["offload"] == "none"  # wire.image_options.ImageLoaded
        assert health == {"status": "ready", "error": None, "model": name}
        reply = await client.post(
            "/v1/images/generations",
            json={"model": name, "prompt": "a kite", "size": "128x64", "n": 2},
        )
    assert reply.status_code == 200, reply.text
    sizes = [
        Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).size for d in reply.json()["data"]
    ]
    assert sizes == [(128, 64)] * 2

    logs = await runtime.logs(name, spec, tail=200)
    assert f"Uvicorn running on http://127.0.0.1:{spec.port}" in logs
    assert '"POST /v1/images/generations HTTP/1.1" 200' in logs

    await runtime.stop(name, spec, timeout=10)
    assert await runtime.inspect(name, spec) is None
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(trust_env=False) as client:
            await client.get(f"{runtime.base_url(spec)}/health")


async def test_a_model_that_fails_to_load_fails_the_start_with_the_servers_reason(
    broken_pipeline: Path, runtime: ProcessRuntime, probe: HttpReadinessProbe
) -> None:
    name = model_name("img-broken")
    spec = spec_for(broken_pipeline, "img-broken")
    await runtime.start(name, spec)
    with pytest.raises(StartFailed) as failed:
        await probe.wait_ready(name, spec, runtime)
    assert "the image server failed: cannot load pipeline from" in failed.value.reason
    assert str(broken_pipeline) in failed.value.reason
    assert failed.value.exit_code is None  # it stays up to report; the manager stops it
    await runtime.stop(name, spec, timeout=10)
    assert await runtime.inspect(name, spec) is None


async def test_bad_settings_exit_at_once_with_the_variable_in_the_logs(
    tiny_pipeline: Path, runtime: ProcessRuntime, probe: HttpReadinessProbe
) -> None:
    name = model_name("img-badenv")
    spec = spec_for(tiny_pipeline, "img-badenv", env={"HOMELAB_IMAGE_QUEUE_LIMIT": "-1"})
    await runtime.start(name, spec)
    with pytest.raises(StartFailed) as failed:
        await probe.wait_ready(name, spec, runtime)
    assert failed.value.exit_code == 2
    assert "HOMELAB_IMAGE_QUEUE_LIMIT" in failed.value.logs
    await runtime.stop(name, spec, timeout=10)
