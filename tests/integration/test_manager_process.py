"""The whole manager with the process runtime: fake vLLM servers as host processes.

No Docker needed (not marked `docker`). Managers on 18171-18175, model servers on
18142-18148.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from manager.process_runtime import ProcessRuntime
from tests.integration.conftest import FAKE_COMMAND, FAKE_ENV, SESSION
from tests.integration.manager_harness import (
    RunningManager,
    model_status,
    start_manager,
    wait_for_state,
)
from wire.procs import REGISTRY_FILE
from wire.procs import is_alive as _alive


def fake_model(suffix: str, port: int, **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": "text",
        "container": f"{SESSION}-{suffix}",
        "port": port,
        "image": "homelab-ai/unused:0",
        "model": f"fake/{suffix}",
        "command": FAKE_COMMAND,
        "env": {**FAKE_ENV, **fields.pop("env", {})},
        "start_timeout": 30,
    }
    entry.update(fields)
    return entry


MODELS = {"proc-a": fake_model("pa", 18142), "proc-b": fake_model("pb", 18143)}


@pytest.fixture
async def managers(tmp_path: Path) -> AsyncIterator[list[RunningManager]]:
    """Managers are stopped after the test, then every server in the registry is killed."""
    started: list[RunningManager] = []
    yield started
    for m in started:
        if not m.task.done():
            await m.stop()
    leftovers = ProcessRuntime(started[0].settings) if started else None
    if leftovers is not None:
        for instance in await leftovers.list_owned():
            await leftovers.stop(instance.model, None, timeout=2)


def registry(manager: RunningManager) -> dict[str, Any]:
    path = Path(manager.settings.log_dir) / REGISTRY_FILE
    return json.loads(path.read_text()) if path.exists() else {}


async def test_process_manager_starts_swaps_and_adopts(managers, tmp_path: Path) -> None:
    first = await start_manager(MODELS, 18171, tmp_path, runtime="process")
    managers.append(first)
    api = first.client()
    lease = (await api.post("/v1/leases", json={"model": "proc-a"})).json()
    assert lease["base_url"] == "http://127.0.0.1:18142"
    auth = {"Authorization": f"Bearer {lease['api_key']}"}
    async with httpx.AsyncClient(base_url=lease["base_url"], trust_env=False) as model:
        reply = await model.post("/v1/completions", json={"prompt": "hello"}, headers=auth)
    assert reply.json()["choices"][0]["text"] == "[proc-a] hello"
    await api.delete(f"/v1/leases/{lease['lease_id']}")
    pid_a = registry(first)["proc-a"]["pid"]

    assert (await api.post("/v1/models/proc-b/ensure")).json()["state"] == "ready"
    assert not _alive(pid_a) and "proc-a" not in registry(first)
    pid_b = registry(first)["proc-b"]["pid"]
    await first.stop()
    assert _alive(pid_b)  # left running for the next manager

    second = await start_manager(MODELS, 18172, tmp_path, runtime="process")
    managers.append(second)
    api = second.client()
    await wait_for_state(api, "proc-b", "ready")
    assert second.scheduler.swaps == 0 and registry(second)["proc-b"]["pid"] == pid_b
    stopped = await api.post("/v1/models/proc-b/stop")
    assert stopped.json()["state"] == "stopped"
    assert not _alive(pid_b) and registry(second) == {}
    assert (await model_status(api, "proc-a"))["state"] == "stopped"


async def use(api: httpx.AsyncClient, model: str) -> None:
    """Take a lease on `model` (starting it if need be) and give it back."""
    lease = await api.post("/v1/leases", json={"model": model})
    assert lease.status_code == 200, lease.text
    await api.delete(f"/v1/leases/{lease.json()['lease_id']}")


async def test_models_that_fit_the_budget_stay_resident_together(managers, tmp_path: Path) -> None:
    """Budget 20: a (10) and b (10) alternate with no swap; c (10) evicts the least recently
    used, a."""
    models = {
        "proc-a": fake_model("pa", 18144, gpu_memory_mib=10),
        "proc-b": fake_model("pb", 18145, gpu_memory_mib=10),
        "proc-c": fake_model("pc", 18146, gpu_memory_mib=10),
    }
    manager = await start_manager(models, 18173, tmp_path, runtime="process", gpu_budget_mib=20)
    managers.append(manager)
    api = manager.client()
    for model in ["proc-a", "proc-b"] * 3:
        await use(api, model)
    pids = {name: entry["pid"] for name, entry in registry(manager).items()}
    assert sorted(pids) == ["proc-a", "proc-b"] and all(_alive(p) for p in pids.values())
    assert (manager.scheduler.swaps, manager.scheduler.evictions) == (2, 0)
    listed = (await api.get("/v1/models")).json()["data"]
    assert [(m["id"], m["state"], m["gpu_memory_mib"]) for m in listed] == [
        ("proc-a", "ready", 10),
        ("proc-b", "ready", 10),
        ("proc-c", "stopped", 10),
    ]

    await use(api, "proc-c")
    assert sorted(registry(manager)) == ["proc-b", "proc-c"]
    assert not _alive(pids["proc-a"]) and _alive(pids["proc-b"])
    assert (manager.scheduler.swaps, manager.scheduler.evictions) == (3, 1)
