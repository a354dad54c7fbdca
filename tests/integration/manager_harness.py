"""Run the real manager app (scheduler + HTTP API + a real runtime) on a loopback port.

`start_manager` builds what `python -m manager serve` builds (settings, the GPU budget,
runtime, HttpReadinessProbe, the NVML check, the lease, footprint and swap-time files,
the warm control where a test sets `host_budget_mib`, Scheduler,
create_app) and serves it with
uvicorn inside the test's event loop. Stopping it runs the app's lifespan
shutdown, which leaves model servers running, as a real manager exit does, so a
second `start_manager` on the same catalogue exercises adoption.

The Docker runtime is scoped to this test session (`homelab-ai.instance` label,
see DockerRuntime): the manager adopts, and removes "unknown" containers, only
among this session's, never other engineers' running on the same engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from manager.__main__ import (
    budgeted,
    build_gpu_check,
    build_gpu_meter,
    host_budget_of,
    load_budget,
)
from manager.api import create_app
from manager.docker_runtime import DockerRuntime
from manager.footprints import FootprintStore
from manager.health import HttpReadinessProbe
from manager.lease_store import LeaseStore
from manager.process_runtime import ProcessRuntime
from manager.scheduler import Scheduler, SchedulerConfig
from manager.settings import ManagerSettings
from manager.spec import parse_catalogue
from manager.warm import HttpWarmControl, SwapTimes
from tests.integration.conftest import SESSION, token
from tests.uvicorn_server import QuickServer


class SessionSettings(ManagerSettings):
    """ManagerSettings plus `instance` (HOMELAB_INSTANCE), which DockerRuntime honours."""

    instance: str | None = None


@dataclass
class RunningManager:
    url: str
    token: str
    settings: SessionSettings
    scheduler: Scheduler
    server: uvicorn.Server
    task: asyncio.Task[None]
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client for the manager API with the token (or `token`, '' for none)."""
        bearer = self.token if token is None else token
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        c = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=120, trust_env=False, **kwargs
        )
        self.clients.append(c)
        return c

    async def stop(self) -> None:
        """Shut the app down (lifespan: scheduler.close(); model servers stay up)."""
        for c in self.clients:
            await c.aclose()
        self.server.should_exit = True
        await self.task


async def start_manager(
    models: dict[str, Any],
    port: int,
    tmp_path: Path,
    *,
    runtime: str = "docker",
    **overrides: Any,
) -> RunningManager:
    """Serve a manager for `models` (models.json content) on 127.0.0.1:`port`."""
    models_file = tmp_path / f"models-{port}.json"
    models_file.write_text(json.dumps(models))
    values: dict[str, Any] = {
        "manager_token": token(),
        "manager_host": "127.0.0.1",
        "manager_port": port,
        "models_file": models_file,
        "runtime": runtime,
        "model_host": "127.0.0.1",
        "hf_cache": str(tmp_path),
        "log_dir": tmp_path / "model-logs",
        "stop_timeout": 5,
        "liveness_interval": 0.5,
        "instance": SESSION,
        # Most tests check the engine's state after stops; standby containers (kept for
        # every model not resident) have their own tests, which pass standby=True.
        "standby": False,
    }
    values.update(overrides)
    settings = SessionSettings(**values)
    catalogue = parse_catalogue(models, source=str(models_file))
    budget = load_budget(settings, catalogue)
    rt = DockerRuntime(settings) if runtime == "docker" else ProcessRuntime(settings)
    # The warm tier only where a test sets a host budget (as the daemon, from the setting).
    host_mib = host_budget_of(settings, rt)[0] if settings.host_budget_mib is not None else None
    scheduler = Scheduler(
        budgeted(catalogue, budget),
        rt,
        HttpReadinessProbe(),
        SchedulerConfig.from_settings(settings),
        gpu_released=build_gpu_check(settings),
        lease_store=LeaseStore(settings.lease_path()),
        budget=budget,
        gpu_used=build_gpu_meter(),
        footprints=FootprintStore(settings.footprint_path()),
        warm=HttpWarmControl() if host_mib is not None else None,
        host_budget_mib=host_mib,
        swap_times=SwapTimes(settings.swap_times_path()),
    )
    app = create_app(scheduler, settings)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = QuickServer(config)
    task = asyncio.create_task(server.serve(), name=f"manager:{port}")
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("the manager stopped before serving")
        await asyncio.sleep(0.02)
    return RunningManager(
        url=f"http://127.0.0.1:{port}",
        token=settings.manager_token.get_secret_value(),
        settings=settings,
        scheduler=scheduler,
        server=server,
        task=task,
    )


async def read_events(
    client: httpx.AsyncClient, into: list[tuple[str, dict | list]], ready: asyncio.Event
) -> None:
    """Append every (event, data) of GET /v1/events to `into` until cancelled."""
    async with client.stream("GET", "/v1/events", timeout=None) as stream:
        event = None
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: ") and event:
                into.append((event, json.loads(line[len("data: ") :])))
                if event == "snapshot":
                    ready.set()
                event = None


@contextlib.asynccontextmanager
async def event_log(manager: RunningManager) -> AsyncIterator[list[tuple[str, dict | list]]]:
    """Collect the manager's SSE events while the block runs (the stream is subscribed first)."""
    events: list[tuple[str, dict | list]] = []
    ready = asyncio.Event()
    task = asyncio.create_task(read_events(manager.client(), events, ready))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        yield events
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await task


async def model_status(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    reply = await client.get("/v1/models")
    reply.raise_for_status()
    return next(m for m in reply.json()["data"] if m["id"] == name)


async def wait_for_state(
    client: httpx.AsyncClient, name: str, state: str, attempts: int = 1200
) -> dict[str, Any]:
    """Poll /v1/models every 50 ms until `name` is in `state`; fail after `attempts` polls."""
    status: dict[str, Any] = {}
    for _ in range(attempts):
        status = await model_status(client, name)
        if status["state"] == state:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never reached {state!r}; last status: {status}")
