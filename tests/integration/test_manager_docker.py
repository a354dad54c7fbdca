"""The whole manager (HTTP API, scheduler, DockerRuntime, HttpReadinessProbe) against real
containers of the fake vLLM image.

Managers and model servers get free ports of 18100-18199, picked per test
(tests/integration/conftest.py).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from manager.runtime import LABEL_INSTANCE, LABEL_MANAGED, LABEL_MODEL
from tests.integration.conftest import FAKE_IMAGE, SESSION, free_ports
from tests.integration.manager_harness import (
    RunningManager,
    event_log,
    model_status,
    start_manager,
    wait_for_state,
)

pytestmark = pytest.mark.docker


def text_model(suffix: str, port: int, **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": "text",
        "container": f"{SESSION}-{suffix}",
        "port": port,
        "image": FAKE_IMAGE,
        "model": f"fake/{suffix}",
        "gpu": False,
        "start_timeout": 30,
    }
    entry.update(fields)
    return entry


def image_model(suffix: str, port: int, **fields: Any) -> dict[str, Any]:
    entry = text_model(suffix, port, type="image", device="cpu", sizes=["64x64"], max_n=1)
    entry["env"] = {"FAKEVLLM_KIND": "image", **fields.pop("env", {})}
    entry.update(fields)
    return entry


def two_models(port_a: int, port_b: int) -> dict[str, dict[str, Any]]:
    """chat-a and chat-b (a test that restarts its manager hands both the same dict)."""
    return {
        "chat-a": text_model("a", port_a, env={"FAKEVLLM_LOAD_SECONDS": "0.3"}),
        "chat-b": text_model("b", port_b, env={"FAKEVLLM_LOAD_SECONDS": "0.3"}),
    }


@pytest.fixture
async def managers(docker_env: Any) -> AsyncIterator[list[RunningManager]]:
    """Managers a test starts are stopped at its end (then docker_env removes containers)."""
    started: list[RunningManager] = []
    yield started
    for m in started:
        if not m.task.done():
            await m.stop()


async def launch(
    managers: list[RunningManager], models: dict, port: int, tmp_path: Path, **kw: Any
) -> RunningManager:
    manager = await start_manager(models, port, tmp_path, **kw)
    managers.append(manager)
    return manager


def containers_of(docker_env: Any, model: str) -> list[Any]:
    return docker_env.containers.list(
        all=True,
        filters={"label": [f"{LABEL_MODEL}={model}", f"{LABEL_INSTANCE}={SESSION}"]},
    )


async def removed(docker_env: Any, model: str, container_id: str | None = None) -> list[Any]:
    """The model's containers (only `container_id`, if given) once they are gone, or after
    10 s: a stop returns when the container died, and its removal follows in the background."""
    for _ in range(100):
        left = [c for c in containers_of(docker_env, model) if container_id in (None, c.id)]
        if not left:
            break
        await asyncio.sleep(0.1)
    return left


async def chat(lease: dict, text: str) -> httpx.Response:
    """A chat request straight to the leased model server, with the lease's upstream key."""
    headers = {"Authorization": f"Bearer {lease['api_key']}"}
    async with httpx.AsyncClient(
        base_url=lease["base_url"], headers=headers, trust_env=False, timeout=30
    ) as client:
        return await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": text}]}
        )


async def test_cold_start_lease_and_release(managers, docker_env, tmp_path: Path) -> None:
    port, port_a, port_b = free_ports(3)
    models_ab = two_models(port_a, port_b)
    manager = await launch(managers, models_ab, port, tmp_path)
    api = manager.client()
    assert (await model_status(api, "chat-a"))["state"] == "stopped"
    assert await removed(docker_env, "chat-a") == []

    lease = await api.post("/v1/leases", json={"model": "chat-a"})
    assert lease.status_code == 200, lease.text
    body = lease.json()
    assert body["model"] == "chat-a" and body["type"] == "text"
    assert body["base_url"] == f"http://127.0.0.1:{port_a}"
    reply = await chat(body, "first words")
    assert reply.json()["choices"][0]["message"]["content"] == "[chat-a] first words"

    status = await model_status(api, "chat-a")
    assert status["state"] == "ready" and status["in_flight"] == 1
    [container] = containers_of(docker_env, "chat-a")
    assert container.labels[LABEL_MANAGED] == "true" and container.status == "running"
    logs = await api.get("/v1/models/chat-a/logs", params={"tail": 5})
    assert logs.status_code == 200 and "POST /v1/chat/completions" in logs.text

    assert (await api.delete(f"/v1/leases/{body['lease_id']}")).status_code == 204
    assert (await model_status(api, "chat-a"))["in_flight"] == 0
    assert (await api.delete(f"/v1/leases/{body['lease_id']}")).status_code == 404


async def test_swap_from_a_to_b(managers, docker_env, tmp_path: Path) -> None:
    port, port_a, port_b = free_ports(3)
    models_ab = two_models(port_a, port_b)
    manager = await launch(managers, models_ab, port, tmp_path)
    api = manager.client()
    async with event_log(manager) as events:
        first = (await api.post("/v1/models/chat-a/ensure")).json()
        assert first["state"] == "ready"
        a_id = containers_of(docker_env, "chat-a")[0].id

        lease = (await api.post("/v1/leases", json={"model": "chat-b"})).json()
        assert (await chat(lease, "after the swap")).json()["choices"][0]["message"][
            "content"
        ] == "[chat-b] after the swap"
        await api.delete(f"/v1/leases/{lease['lease_id']}")
        await wait_for_state(api, "chat-a", "stopped")

    assert await removed(docker_env, "chat-a") == []  # stopped and removed
    assert [c.status for c in containers_of(docker_env, "chat-b")] == ["running"]
    swaps = [data for kind, data in events if kind == "swap"]
    assert [(s["from"], s["to"]) for s in swaps] == [(None, "chat-a"), ("chat-a", "chat-b")]
    states_a = [d["state"] for kind, d in events if kind == "state" and d["model"] == "chat-a"]
    assert states_a == ["starting", "ready", "stopping", "stopped"]
    assert await removed(docker_env, "chat-a", a_id) == []


async def test_no_stop_while_a_lease_is_held(managers, docker_env, tmp_path: Path) -> None:
    port, port_a, port_b = free_ports(3)
    models_ab = two_models(port_a, port_b)
    manager = await launch(managers, models_ab, port, tmp_path)
    api = manager.client()
    held = (await api.post("/v1/leases", json={"model": "chat-a"})).json()
    wanting_b = asyncio.create_task(manager.client().post("/v1/leases", json={"model": "chat-b"}))
    for _ in range(600):
        if (await model_status(api, "chat-b"))["waiting"] == 1:
            break
        await asyncio.sleep(0.05)
    assert (await model_status(api, "chat-b"))["waiting"] == 1
    # Give the scheduler every chance to do the wrong thing (housekeeping runs every 0.5 s).
    await asyncio.sleep(1.5)
    assert (await model_status(api, "chat-a"))["state"] == "ready"
    assert [c.status for c in containers_of(docker_env, "chat-a")] == ["running"]
    # chat-b's container may be prepared (created, standby off here) but never started.
    assert [c.status for c in containers_of(docker_env, "chat-b")] in ([], ["created"])
    assert not wanting_b.done()
    assert (await chat(held, "still mine")).status_code == 200

    await api.delete(f"/v1/leases/{held['lease_id']}")
    granted = await wanting_b
    assert granted.status_code == 200 and granted.json()["model"] == "chat-b"
    assert await removed(docker_env, "chat-a") == []


async def test_fifty_concurrent_requests_over_two_models(managers, tmp_path: Path) -> None:
    port, port_a, port_b = free_ports(3)
    models_ab = two_models(port_a, port_b)
    bound = 5
    manager = await launch(managers, models_ab, port, tmp_path, batch_bound=bound)

    async def one_request(i: int) -> str:
        model = ("chat-a", "chat-b")[i % 2]
        async with manager.client() as api:
            lease = await api.post("/v1/leases", json={"model": model})
            assert lease.status_code == 200, lease.text
            body = lease.json()
            try:
                reply = await chat(body, f"request {i}")
                assert reply.status_code == 200, reply.text
                return reply.json()["choices"][0]["message"]["content"]
            finally:
                released = await api.delete(f"/v1/leases/{body['lease_id']}")
                assert released.status_code == 204

    async with event_log(manager) as events:
        answers = await asyncio.gather(*(one_request(i) for i in range(50)))
    assert answers == [f"[{('chat-a', 'chat-b')[i % 2]}] request {i}" for i in range(50)]
    swaps = [data for kind, data in events if kind == "swap"]
    # Each residency serves at least `bound` waiting requests (or all that remain), so
    # 25 requests per model need at most ceil(25 / bound) starts of each.
    assert 2 <= len(swaps) <= 2 * math.ceil(25 / bound), swaps
    assert len(swaps) == manager.scheduler.swaps


async def test_a_crash_during_start_is_a_503_with_exit_code_and_logs(
    managers, docker_env, tmp_path: Path
) -> None:
    port1, port2, port_a, port_b = free_ports(4)
    models_ab = two_models(port_a, port_b)
    models = {
        **models_ab,
        "broken": text_model("broken", port1, env={"FAKEVLLM_FAIL_LOAD": "1"}),
    }
    manager = await launch(managers, models, port2, tmp_path)
    api = manager.client()
    failed = await api.post("/v1/leases", json={"model": "broken"})
    assert failed.status_code == 503
    error = failed.json()["error"]
    assert error["source"] == "manager" and error["code"] == "model_start_failed"
    assert "exit code 1" in error["message"]
    assert "Engine core initialization failed" in error["message"]
    status = await model_status(api, "broken")
    assert status["state"] == "failed" and "exited with code 1" in status["last_error"]

    ok = await api.post("/v1/leases", json={"model": "chat-a"})  # the failed one is cleared away
    assert ok.status_code == 200
    assert await removed(docker_env, "broken") == []


async def test_a_server_that_never_becomes_ready_fails_at_its_start_timeout(
    managers, tmp_path: Path
) -> None:
    port1, port2 = free_ports(2)
    models = {
        "stuck": text_model("stuck", port1, env={"FAKEVLLM_NEVER_READY": "1"}, start_timeout=2),
    }
    manager = await launch(managers, models, port2, tmp_path)
    api = manager.client()
    failed = await api.post("/v1/leases", json={"model": "stuck"})
    assert failed.status_code == 503
    assert "start_timeout of 2s" in failed.json()["error"]["message"]
    assert (await model_status(api, "stuck"))["state"] == "failed"


async def test_a_restarted_manager_adopts_the_running_model(
    managers, docker_env, tmp_path: Path
) -> None:
    port1, port2, port3, port4, port5, port_a, port_b = free_ports(7)
    models_ab = two_models(port_a, port_b)
    models = {**models_ab, "img": image_model("img", port1)}
    # A server of a model the next catalogue does not have, left running by a manager:
    # it must be removed at adoption.
    other = await launch(managers, {"gone": text_model("gone", port2)}, port3, tmp_path)
    assert (await other.client().post("/v1/models/gone/ensure")).status_code == 200
    await other.stop()
    assert [c.status for c in containers_of(docker_env, "gone")] == ["running"]

    first = await launch(managers, models, port4, tmp_path)
    assert (await first.client().post("/v1/models/chat-b/ensure")).json()["state"] == "ready"
    assert await removed(docker_env, "gone") == []
    [running] = containers_of(docker_env, "chat-b")
    await first.stop()
    assert docker_env.containers.get(running.id).status == "running"  # left up on exit

    second = await launch(managers, models, port5, tmp_path)
    api = second.client()
    await wait_for_state(api, "chat-b", "ready")
    assert second.scheduler.swaps == 0  # adopted, not started
    assert [c.id for c in containers_of(docker_env, "chat-b")] == [running.id]
    lease = (await api.post("/v1/leases", json={"model": "chat-b"})).json()
    assert (await chat(lease, "adopted")).status_code == 200
    await api.delete(f"/v1/leases/{lease['lease_id']}")

    image = await api.post("/v1/leases", json={"model": "img"})  # and swaps on from there
    assert image.status_code == 200 and image.json()["type"] == "image"
    assert await removed(docker_env, "chat-b") == []


async def test_an_idle_model_is_stopped_after_its_idle_ttl(
    managers, docker_env, tmp_path: Path
) -> None:
    port1, port2 = free_ports(2)
    models = {"sleepy": text_model("sleepy", port1, idle_ttl=1)}
    manager = await launch(managers, models, port2, tmp_path, liveness_interval=0.2)
    api = manager.client()
    lease = (await api.post("/v1/leases", json={"model": "sleepy"})).json()
    await asyncio.sleep(1.5)  # a held lease is not idleness
    assert (await model_status(api, "sleepy"))["state"] == "ready"
    await api.delete(f"/v1/leases/{lease['lease_id']}")
    await wait_for_state(api, "sleepy", "stopped")
    assert await removed(docker_env, "sleepy") == []


async def test_the_token_is_required_and_checked(managers, tmp_path: Path) -> None:
    port, port_a, port_b = free_ports(3)
    models_ab = two_models(port_a, port_b)
    manager = await launch(managers, models_ab, port, tmp_path)
    assert (await manager.client("").get("/healthz")).json() == {"status": "ok"}
    for client in (manager.client(""), manager.client("wrong-token-of-enough-length")):
        for method, path in (
            ("GET", "/v1/models"),
            ("POST", "/v1/leases"),
            ("POST", "/v1/models/chat-a/ensure"),
            ("GET", "/v1/events"),
        ):
            refused = await client.request(method, path, json={"model": "chat-a"})
            assert refused.status_code == 401, (method, path)
            error = refused.json()["error"]
            assert error["type"] == "authentication_error" and error["source"] == "manager"
    assert manager.scheduler.swaps == 0  # nothing was started by refused calls


async def test_a_server_that_dies_while_ready_is_marked_failed_and_restarted(
    managers, docker_env, tmp_path: Path
) -> None:
    port1, port2 = free_ports(2)
    models = {"fragile": text_model("fragile", port1, env={"FAKEVLLM_CRASH_AFTER": "1"})}
    manager = await launch(managers, models, port2, tmp_path, liveness_interval=0.2)
    api = manager.client()
    lease = (await api.post("/v1/leases", json={"model": "fragile"})).json()
    assert (await chat(lease, "last words")).status_code == 200  # then it exits 3
    await api.delete(f"/v1/leases/{lease['lease_id']}")
    failed = await wait_for_state(api, "fragile", "failed")
    assert "exited with code 3" in failed["last_error"]
    [dead] = containers_of(docker_env, "fragile")

    again = await api.post("/v1/leases", json={"model": "fragile"})  # the next request retries
    assert again.status_code == 200
    assert (await chat(again.json(), "back")).status_code == 200
    assert [c.id for c in containers_of(docker_env, "fragile")] != [dead.id]


async def test_a_container_killed_while_ready_is_noticed_from_the_engines_events(
    managers, docker_env, tmp_path: Path
) -> None:
    """No liveness pass runs here (interval 1 h): only the engine's `die` event can tell."""
    port1, port2 = free_ports(2)
    models = {"doomed": text_model("doomed", port1)}
    manager = await launch(managers, models, port2, tmp_path, liveness_interval=3600)
    api = manager.client()
    assert (await api.post("/v1/models/doomed/ensure")).json()["state"] == "ready"
    [container] = containers_of(docker_env, "doomed")
    container.kill()
    failed = await wait_for_state(api, "doomed", "failed")
    assert "137" in failed["last_error"]


async def test_a_restarted_manager_keeps_the_leases_and_does_not_stop_their_container(
    managers, docker_env, tmp_path: Path
) -> None:
    """The Docker variant of the fault test's restart case (the manager here stops without
    releasing, in-process: what matters is that the lease file outlives it)."""
    port1, port2, port_a, port_b = free_ports(4)
    models_ab = two_models(port_a, port_b)
    first = await launch(managers, models_ab, port1, tmp_path)
    lease = (await first.client().post("/v1/leases", json={"model": "chat-a"})).json()
    [running] = containers_of(docker_env, "chat-a")
    await first.stop()

    second = await launch(managers, models_ab, port2, tmp_path)
    api = second.client()
    status = await wait_for_state(api, "chat-a", "ready")
    assert status["in_flight"] == 1, "the new manager knows the lease in flight"
    other = asyncio.create_task(api.post("/v1/models/chat-b/ensure"))
    await asyncio.sleep(1.5)
    assert not other.done()
    assert docker_env.containers.get(running.id).status == "running", "stopped under a lease"
    assert (await chat(lease, "still here")).status_code == 200
    assert (await api.delete(f"/v1/leases/{lease['lease_id']}")).status_code == 204
    assert (await other).json()["state"] == "ready"
    assert await removed(docker_env, "chat-a") == []


async def test_a_container_created_but_never_used_is_found_by_its_labels(
    managers, docker_env, tmp_path: Path
) -> None:
    """A manager killed right after creating a container: the next one finds it by its
    labels, and two models never run at once."""
    port1, port2, port_a, port_b = free_ports(4)
    models_ab = two_models(port_a, port_b)
    from manager.docker_runtime import DockerRuntime
    from manager.spec import parse_catalogue
    from tests.integration.conftest import token
    from tests.integration.manager_harness import SessionSettings

    models = {**models_ab, "lost": text_model("lost", port1)}
    catalogue = parse_catalogue(models, source="test")
    settings = SessionSettings(
        manager_token=token(), hf_cache=str(tmp_path), model_host="127.0.0.1", instance=SESSION
    )
    config = DockerRuntime(settings).container_config("lost", catalogue.models["lost"])
    docker_env.containers.run(**config)  # as a killed manager left it

    manager = await launch(managers, models, port2, tmp_path)
    api = manager.client()
    assert (await api.post("/v1/models/chat-b/ensure")).json()["state"] == "ready"
    running = [
        c.labels[LABEL_MODEL]
        for c in docker_env.containers.list(filters={"label": f"{LABEL_INSTANCE}={SESSION}"})
    ]
    assert running == ["chat-b"]


async def test_models_that_fit_the_budget_stay_up_together(
    managers, docker_env, tmp_path: Path
) -> None:
    """Budget 20 MiB: chat-a (10) and chat-b (10) serve alternating requests from two
    running containers with no swap; chat-c (10) evicts the least recently used, chat-a."""
    port1, port2, port3, port4 = free_ports(4)
    fast = {"FAKEVLLM_LOAD_SECONDS": "0.3"}
    models = {
        "chat-a": text_model("a", port1, env=fast, gpu_memory_mib=10),
        "chat-b": text_model("b", port2, env=fast, gpu_memory_mib=10),
        "chat-c": text_model("c", port3, env=fast, gpu_memory_mib=10),
    }
    manager = await launch(managers, models, port4, tmp_path, gpu_budget_mib=20)
    api = manager.client()
    async with event_log(manager) as events:
        for model in ["chat-a", "chat-b"] * 3:
            lease = (await api.post("/v1/leases", json={"model": model})).json()
            reply = (await chat(lease, "hi")).json()["choices"][0]["message"]["content"]
            assert reply == f"[{model}] hi"
            await api.delete(f"/v1/leases/{lease['lease_id']}")
        running = {m: [c.status for c in containers_of(docker_env, m)] for m in models}
        assert running == {"chat-a": ["running"], "chat-b": ["running"], "chat-c": []}
        assert (manager.scheduler.swaps, manager.scheduler.evictions) == (2, 0)

        lease = (await api.post("/v1/leases", json={"model": "chat-c"})).json()
        await api.delete(f"/v1/leases/{lease['lease_id']}")
        await wait_for_state(api, "chat-a", "stopped")
    assert await removed(docker_env, "chat-a") == []
    assert [c.status for c in containers_of(docker_env, "chat-b")] == ["running"]
    swaps = [(d["from"], d["to"]) for kind, d in events if kind == "swap"]
    assert swaps == [(None, "chat-a"), (None, "chat-b"), ("chat-a", "chat-c")]


async def running_container(docker_env: Any, model: str, not_id: str | None = None) -> Any:
    """The model's one running container (other than `not_id`), once there is one."""
    for _ in range(150):
        found = [c for c in containers_of(docker_env, model) if c.status == "running"]
        if len(found) == 1 and found[0].id != not_id:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no running container of {model}: {containers_of(docker_env, model)}")


async def test_standby_containers_are_kept_for_models_not_resident_and_survive_a_restart(
    managers, docker_env, tmp_path: Path
) -> None:
    port1, port2, port_a, port_b = free_ports(4)
    models_ab = two_models(port_a, port_b)
    manager = await launch(managers, models_ab, port1, tmp_path, standby=True)
    api = manager.client()
    # After adoption, every stopped model gets a standby container: running, no server.
    standby_a = await running_container(docker_env, "chat-a")
    await running_container(docker_env, "chat-b")
    assert standby_a.labels["homelab-ai.gated"] == "true"
    assert (await model_status(api, "chat-a"))["state"] == "stopped"

    lease = (await api.post("/v1/leases", json={"model": "chat-a"})).json()
    assert (await chat(lease, "released")).status_code == 200
    assert [c.id for c in containers_of(docker_env, "chat-a")] == [standby_a.id]  # not recreated
    await api.delete(f"/v1/leases/{lease['lease_id']}")

    lease = (await api.post("/v1/leases", json={"model": "chat-b"})).json()  # a swap
    assert (await chat(lease, "swapped")).status_code == 200
    await api.delete(f"/v1/leases/{lease['lease_id']}")
    await wait_for_state(api, "chat-a", "stopped")
    # The served container of chat-a is gone; a new standby one replaces it.
    again_a = await running_container(docker_env, "chat-a", not_id=standby_a.id)
    assert await removed(docker_env, "chat-a", standby_a.id) == []
    await manager.stop()

    second = await launch(managers, models_ab, port2, tmp_path, standby=True)
    api = second.client()
    await wait_for_state(api, "chat-b", "ready")  # the server is adopted...
    assert (await model_status(api, "chat-a"))["state"] == "stopped"  # ...the standby one not
    assert [c.id for c in containers_of(docker_env, "chat-a")] == [again_a.id]  # but kept
    lease = (await api.post("/v1/leases", json={"model": "chat-a"})).json()
    assert (await chat(lease, "after the restart")).status_code == 200
    assert [c.id for c in containers_of(docker_env, "chat-a")] == [again_a.id]
    await api.delete(f"/v1/leases/{lease['lease_id']}")
