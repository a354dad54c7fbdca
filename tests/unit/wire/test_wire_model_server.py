"""Contract: the manager and the proxy with the real image server, through
`wire.model_server`. The real image server app (a fake pipeline behind its model
protocol) is served on loopback; the manager's real process runtime writes the upstream
key, the manager's real readiness probe reads ``GET /health`` and the proxy's real MCP
step poll reads ``GET /v1/progress``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from imageserver.api import create_app
from imageserver.model import StepMeter
from imageserver.settings import Settings as ImageSettings
from manager.health import HttpReadinessProbe
from manager.process_runtime import ProcessRuntime
from manager.settings import ManagerSettings
from proxy.mcp.calls import StepPoll
from proxy.modelcall import ModelCalls
from proxy.upstream import UpstreamPool
from tests.unit.imageserver.imageserver_fakes import FakeModel, loader_for, settings
from tests.unit.manager.manager_fakes import catalogue
from tests.unit.proxy.proxy_fakes import serve_asgi
from wire.errors import MODEL_SERVER, ErrorEnvelope
from wire.lease import LeaseGrant
from wire.model_server import IMAGE_API_KEY_ENV, UPSTREAM_KEY_ENV, ImageHealth, ImageProgress

KEY = "upstream-" + "Zq4x" * 8
AUTH = {"Authorization": f"Bearer {KEY}"}


@asynccontextmanager
async def image_server(loader: Callable[[ImageSettings], object]) -> AsyncIterator[str]:
    async with serve_asgi(create_app(settings(api_key=KEY), loader)) as url:  # type: ignore[arg-type]
        yield url


def test_the_key_variable_the_runtime_writes_is_the_one_the_image_server_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = ProcessRuntime(ManagerSettings(manager_token="t0ken-" + "x" * 16, log_dir=tmp_path))
    env = runtime.environment("pix", catalogue().models["pix"], api_key=KEY)
    assert env[UPSTREAM_KEY_ENV["image"]] == KEY and UPSTREAM_KEY_ENV["image"] == IMAGE_API_KEY_ENV
    for name in [k for k in __import__("os").environ if k.startswith("HOMELAB_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("HOMELAB_IMAGE_"):
            monkeypatch.setenv(name, value)
    read = ImageSettings()
    assert read.api_key is not None and read.api_key.get_secret_value() == KEY
    assert read.served_name == "pix"


async def test_health_is_read_by_the_managers_probe_and_the_refusal_is_the_wire_envelope() -> None:
    gate = threading.Event()
    spec = catalogue().models["pix"]
    async with (
        image_server(loader_for(FakeModel(), gate)) as url,
        HttpReadinessProbe() as probe,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(url + "/health", headers=AUTH) as resp:
            body = ImageHealth.model_validate_json(await resp.read())
        assert (body.status, resp.status, body.model) == ("loading", 200, "fake-image")
        assert (await probe.check("pix", spec, url, api_key=KEY)).state == "loading"
        gate.set()
        for _ in range(500):
            verdict = await probe.check("pix", spec, url, api_key=KEY)
            if verdict.state != "loading":
                break
            await asyncio.sleep(0.01)
        assert verdict.state == "ready", verdict
        for path in ("/v1/progress", "/health"):  # every path wants the key (issue 23)
            async with http.get(url + path) as refused:
                assert refused.status == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
                error = ErrorEnvelope.model_validate_json(await refused.read()).error
            assert (error.code, error.type, error.source) == (
                "invalid_api_key",
                "authentication_error",
                MODEL_SERVER,
            )


async def test_a_failed_load_is_a_failed_verdict_with_its_reason() -> None:
    def broken(_settings: ImageSettings) -> object:
        raise RuntimeError("no such weights")

    spec = catalogue().models["pix"]
    async with image_server(broken) as url, HttpReadinessProbe() as probe:
        for _ in range(500):
            verdict = await probe.check("pix", spec, url, api_key=KEY)
            if verdict.state != "loading":
                break
            await asyncio.sleep(0.01)
    assert verdict.state == "failed" and "no such weights" in verdict.reason, verdict


async def test_progress_is_read_by_the_proxys_step_poll() -> None:
    model = FakeModel()
    upstream = UpstreamPool()
    # The proxy's one model call (its GET needs only the lean client; no lease is taken).
    calls = ModelCalls(
        fleet=None,  # type: ignore[arg-type]
        metrics=None,  # type: ignore[arg-type]
        upstream=upstream,
        retry_endpoints=(),
        connect_timeout=5.0,
        read_timeout=5.0,
    )
    async with image_server(loader_for(model)) as url, aiohttp.ClientSession() as http:
        lease = LeaseGrant(
            lease_id="pix-lease", model="pix", type="image", base_url=url, ttl=60, api_key=KEY
        )
        poll = StepPoll(calls, lease)
        for _ in range(500):
            async with http.get(url + "/health", headers=AUTH) as resp:
                if ImageHealth.model_validate_json(await resp.read()).status == "ready":
                    break
            await asyncio.sleep(0.01)
        assert await poll() is None  # idle: nothing to say
        model.meter = StepMeter(running=True, step=3, steps=20)  # what the pipeline writes
        assert await poll() == (3, 20)
        async with http.get(url + "/v1/progress", headers=AUTH) as resp:
            assert ImageProgress.model_validate_json(await resp.read()) == ImageProgress(
                running=True, step=3, steps=20
            )
        model.meter = StepMeter(running=True, step=0, steps=20)  # no step done yet
        assert await poll() is None
        assert not poll.dead
    await upstream.aclose()
