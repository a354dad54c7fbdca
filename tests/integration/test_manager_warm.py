"""The warm tier through the whole manager (HTTP API, scheduler, a real runtime, the HTTP
warm control) against the stand-in vLLM's sleep mode, with both runtimes: host processes
and real containers of the fake vLLM image (those marked `docker`).

The stand-in really takes `FAKEVLLM_WEIGHTS_MIB` of host memory while asleep, so the
learned host footprint is a real reading of the server's memory. Learned cold-start
times are seeded into swaptimes.json (the stand-in loads in a blink, which would make a
cold start cheaper than keeping it warm: the policy would rightly stop it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import FAKE_COMMAND, FAKE_ENV, FAKE_IMAGE, SESSION, free_ports
from tests.integration.manager_harness import (
    RunningManager,
    event_log,
    model_status,
    start_manager,
    wait_for_state,
)
from wire.procs import REGISTRY_FILE

WEIGHTS_MIB = 64


def model(runtime: str, suffix: str, port: int, **fields: Any) -> dict[str, Any]:
    env = {"FAKEVLLM_WEIGHTS_MIB": str(WEIGHTS_MIB), **fields.pop("env", {})}
    entry: dict[str, Any] = {
        "type": "text",
        "container": f"{SESSION}-{suffix}",
        "port": port,
        "image": FAKE_IMAGE,
        "model": f"fake/{suffix}",
        "gpu": False,
        "start_timeout": 30,
        "gpu_memory_mib": 10,
        "env": env,
    }
    if runtime == "process":
        entry["command"] = FAKE_COMMAND
        entry["env"] = {**FAKE_ENV, **env}
    entry.update(fields)
    return entry


def catalogue(runtime: str, ports: list[int], **warm_env: str) -> dict[str, Any]:
    return {
        "warm-a": model(runtime, "wa", ports[0], warm={"level": 1}, env=dict(warm_env)),
        "cold-c": model(runtime, "wc", ports[1]),
        "$gpu_budget_mib": 10,
    }


RUNTIMES = [pytest.param("process"), pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture(params=RUNTIMES)
async def runtime(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":
        request.getfixturevalue("docker_env")  # skips without an engine; cleans up after
    return str(request.param)


@pytest.fixture
async def managers() -> AsyncIterator[list[RunningManager]]:
    started: list[RunningManager] = []
    yield started
    for m in started:
        if not m.task.done():
            await m.stop()
    if started and started[0].settings.runtime == "process":
        from manager.process_runtime import ProcessRuntime

        leftovers = ProcessRuntime(started[0].settings)
        for instance in await leftovers.list_owned():
            await leftovers.stop(instance.model, None, timeout=2)


async def launch(
    managers: list[RunningManager], models: dict, port: int, tmp_path: Path, runtime: str
) -> RunningManager:
    logs = tmp_path / "model-logs"
    logs.mkdir(exist_ok=True)
    seeded = {"models": {name: {"load_s": [60.0] * 5} for name in models if name[0] != "$"}}
    times = logs / "swaptimes.json"
    if not times.exists():
        times.write_text(json.dumps(seeded))
    manager = await start_manager(models, port, tmp_path, runtime=runtime, host_budget_mib=4096)
    managers.append(manager)
    return manager


async def use(api: httpx.AsyncClient, name: str) -> dict[str, Any]:
    reply = await api.post("/v1/leases", json={"model": name})
    assert reply.status_code == 200, reply.text
    lease = reply.json()
    await api.delete(f"/v1/leases/{lease['lease_id']}")
    return lease


async def learned_host_memory(api: httpx.AsyncClient, name: str) -> dict[str, Any]:
    """`name`'s status once its host memory was read (aside: Docker's stats take a second
    or two)."""
    for _ in range(200):
        status = await model_status(api, name)
        if status["host_memory_mib"] is not None:
            return status
        await asyncio.sleep(0.05)
    return status


async def server_of(manager: RunningManager, name: str) -> str:
    """What identifies the model's running server: its pid, or its container's id."""
    spec = manager.scheduler.spec(name)
    if manager.settings.runtime == "process":
        registry = json.loads((Path(manager.settings.log_dir) / REGISTRY_FILE).read_text())
        return str(registry[name]["pid"])
    import docker

    return str(docker.from_env().containers.get(spec.container).id)


async def fake_stats(lease: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {lease['api_key']}"}
    async with httpx.AsyncClient(base_url=lease["base_url"], trust_env=False) as client:
        reply = await client.get("/_fake/stats", headers=headers)
    reply.raise_for_status()
    return reply.json()


async def kill(manager: RunningManager, name: str) -> None:
    server = await server_of(manager, name)
    if manager.settings.runtime == "process":
        os.killpg(int(server), signal.SIGKILL)
    else:
        import docker

        docker.from_env().containers.get(server).kill()


async def test_a_warm_model_sleeps_wakes_and_is_adopted_asleep(
    runtime: str, managers, tmp_path: Path
) -> None:
    ports = free_ports(4)
    models = catalogue(runtime, ports)
    first = await launch(managers, models, ports[2], tmp_path, runtime)
    api = first.client()
    async with event_log(first) as events:
        lease = await use(api, "warm-a")
        server = await server_of(first, "warm-a")
        await use(api, "cold-c")  # no GPU room for both: warm-a falls asleep, not stopped
        status = await model_status(api, "warm-a")
        assert status["state"] == "sleeping" and status["warm_level"] == 1
        status = await learned_host_memory(api, "warm-a")
        assert status["host_memory_mib"] >= WEIGHTS_MIB  # read from the sleeping server
        stats = await fake_stats(lease)
        assert (stats["sleeping"], stats["sleeps"], stats["sleep_mode"]) == (1, 1, False)
        woken = await use(api, "warm-a")  # cold-c is stopped, warm-a wakes: same server
        assert await server_of(first, "warm-a") == server
        assert woken["api_key"] == lease["api_key"]
        assert (await fake_stats(woken))["wakes"] == 1
        assert (await model_status(api, "cold-c"))["state"] == "stopped"
        await use(api, "cold-c")  # asleep again, for the next manager
    moves = [e[1]["state"] for e in events if e[0] == "state" and e[1]["model"] == "warm-a"]
    assert moves == [
        "starting",
        "ready",
        "falling_asleep",
        "sleeping",
        "waking",
        "ready",
        "falling_asleep",
        "sleeping",
    ]
    assert (await model_status(api, "warm-a"))["wake_seconds"] is not None
    await first.stop()

    second = await launch(managers, models, ports[3], tmp_path, runtime)
    api = second.client()
    await wait_for_state(api, "warm-a", "sleeping")  # found asleep and kept so
    assert second.scheduler.swaps == 0
    await use(api, "warm-a")
    assert await server_of(second, "warm-a") == server and second.scheduler.wakes == 1


async def test_a_failed_wake_falls_back_to_a_cold_start(
    runtime: str, managers, tmp_path: Path
) -> None:
    ports = free_ports(3)
    models = catalogue(runtime, ports, FAKEVLLM_FAIL_WAKE="1")
    manager = await launch(managers, models, ports[2], tmp_path, runtime)
    api = manager.client()
    await use(api, "warm-a")
    server = await server_of(manager, "warm-a")
    await use(api, "cold-c")
    await wait_for_state(api, "warm-a", "sleeping")
    lease = await use(api, "warm-a")  # the wake fails: stopped and started again, served
    assert await server_of(manager, "warm-a") != server
    status = await model_status(api, "warm-a")
    assert status["state"] == "ready" and "wake failed" in status["last_error"]
    assert (await fake_stats(lease))["sleeping"] == 0


async def test_a_sleeping_server_that_dies_is_noticed(
    runtime: str, managers, tmp_path: Path
) -> None:
    ports = free_ports(3)
    manager = await launch(managers, catalogue(runtime, ports), ports[2], tmp_path, runtime)
    api = manager.client()
    await use(api, "warm-a")
    await use(api, "cold-c")
    await wait_for_state(api, "warm-a", "sleeping")
    await kill(manager, "warm-a")
    await wait_for_state(api, "warm-a", "failed")
    assert "while asleep" in (await model_status(api, "warm-a"))["last_error"]
    await use(api, "warm-a")  # cleaned up and cold-started
    for _ in range(100):
        if (await model_status(api, "warm-a"))["state"] == "ready":
            break
        await asyncio.sleep(0.05)
    assert (await model_status(api, "warm-a"))["state"] == "ready"


async def test_an_image_model_is_parked_and_unparked(
    runtime: str, managers, tmp_path: Path
) -> None:
    ports = free_ports(3)
    models = catalogue(runtime, ports)
    models["warm-a"].update(type="image", device="cpu", sizes=["64x64"], max_n=1)
    models["warm-a"]["env"]["FAKEVLLM_KIND"] = "image"
    manager = await launch(managers, models, ports[2], tmp_path, runtime)
    api = manager.client()
    lease = await use(api, "warm-a")
    server = await server_of(manager, "warm-a")
    await use(api, "cold-c")
    status = await model_status(api, "warm-a")
    assert status["state"] == "sleeping" and status["backend"] == "diffusers"
    assert (await fake_stats(lease))["sleeping"] == 1  # parked: /park was called
    await use(api, "warm-a")
    assert await server_of(manager, "warm-a") == server
    assert (await fake_stats(lease))["wakes"] == 1  # /unpark
