"""The warm tier against the real vLLM CPU build: it has no sleep mode (its platform check
allows CUDA, ROCm and XPU only), so a model that opts in (models.json ``warm``) but runs
on the CPU gets no ``--enable-sleep-mode``, its server refuses the manager's
``POST /sleep`` (no such route without the development mode), and the manager stops it
instead of keeping it asleep: the GPU room is given back all the same, the next model
starts, and the model is not asked to sleep again until its server is restarted.

The real manager (process runtime) launches the real vLLM with the small SmolLM2 model;
the other model is the stand-in vLLM. Sleep mode itself runs only on a GPU
(``python -m bench.warm``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from manager.launch import DEV_MODE_ENV, SLEEP_MODE_FLAG
from tests.e2e.conftest import CPU_ARGS, OFFLINE, START_TIMEOUT_S, VllmRuntime
from tests.integration.conftest import FAKE_COMMAND, FAKE_ENV, SESSION
from tests.integration.manager_harness import (
    RunningManager,
    event_log,
    model_status,
    start_manager,
)
from tests.integration.proxy.proxy_live import free_ports

pytestmark = pytest.mark.vllm


def models(runtime: VllmRuntime, ports: list[int]) -> dict[str, Any]:
    return {
        "smol": {
            "type": "text",
            "container": f"{SESSION}-warm-smol",
            "port": ports[0],
            "image": "vllm/vllm-openai:v0.32.0",
            "model": str(runtime.model_dir),
            "command": [str(runtime.python), "-m", "vllm.entrypoints.openai.api_server"],
            "args": CPU_ARGS,
            "gpu": False,
            "gpu_memory_mib": 10,
            "start_timeout": START_TIMEOUT_S,
            "env": OFFLINE,
            "warm": {"level": 1},
        },
        "other": {
            "type": "text",
            "container": f"{SESSION}-warm-other",
            "port": ports[1],
            "image": "homelab-ai/fakevllm:test",
            "model": "fake/other",
            "command": FAKE_COMMAND,
            "env": FAKE_ENV,
            "gpu": False,
            "gpu_memory_mib": 10,
            "start_timeout": 30,
        },
        "$gpu_budget_mib": 10,
    }


async def use(manager: RunningManager, name: str) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=manager.url,
        headers={"Authorization": f"Bearer {manager.token}"},
        timeout=START_TIMEOUT_S + 60,
        trust_env=False,
    ) as api:
        reply = await api.post("/v1/leases", json={"model": name})
        assert reply.status_code == 200, reply.text
        lease = reply.json()
        await api.delete(f"/v1/leases/{lease['lease_id']}")
    return lease


async def test_real_vllm_on_the_cpu_cannot_sleep_so_the_warm_model_is_stopped(
    vllm_runtime: VllmRuntime, tmp_path: Path
) -> None:
    ports = free_ports(3)
    logs = tmp_path / "model-logs"
    logs.mkdir()
    # a learned cold start long enough that the policy prefers sleeping smol to stopping it
    (logs / "swaptimes.json").write_text(json.dumps({"models": {"smol": {"load_s": [60.0] * 5}}}))
    manager = await start_manager(
        models(vllm_runtime, ports),
        ports[2],
        tmp_path,
        runtime="process",
        host_budget_mib=4096,
        queue_timeout=START_TIMEOUT_S + 30,
    )
    try:
        launcher, spec = manager.scheduler.runtime, manager.scheduler.spec("smol")
        # the CPU build has no sleep mode: neither the flag nor the development routes
        assert SLEEP_MODE_FLAG not in launcher.argv("smol", spec)  # type: ignore[attr-defined]
        assert DEV_MODE_ENV not in launcher.environment("smol", spec, "k" * 32)  # type: ignore[attr-defined]
        async with event_log(manager) as events:
            lease = await use(manager, "smol")
            headers = {"Authorization": f"Bearer {lease['api_key']}"}
            async with httpx.AsyncClient(trust_env=False) as client:
                root = lease["base_url"].removesuffix("/v1")
                assert (
                    await client.post(f"{root}/sleep?level=1", headers=headers)
                ).status_code == 404
            await use(manager, "other")  # no room for both: smol must go, and cannot sleep
            api = manager.client()
            smol = await model_status(api, "smol")
            assert smol["state"] == "stopped", smol
            assert "sleep failed" in (smol["last_error"] or ""), smol
            assert (await model_status(api, "other"))["state"] == "ready"
        moves = [e[1]["state"] for e in events if e[0] == "state" and e[1]["model"] == "smol"]
        assert moves == ["starting", "ready", "falling_asleep", "failed", "stopping", "stopped"]
        assert manager.scheduler.sleeps == 1
    finally:
        await manager.stop()
        from manager.process_runtime import ProcessRuntime

        leftovers = ProcessRuntime(manager.settings)
        for instance in await leftovers.list_owned():
            await leftovers.stop(instance.model, None, timeout=5)
