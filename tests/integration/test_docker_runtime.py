"""DockerRuntime + HttpReadinessProbe against the real Docker engine and the fake vLLM image.

Ports: free ones of 18100-18199, picked per test (tests/integration/conftest.py). `stop` returns once the container died and removes it in the
background: a test that looks at the engine after a stop awaits `runtime.settled()`.
Stops right after a start use timeout=1: a container stopped
before Python has installed its SIGTERM handler ignores SIGTERM (it is PID 1), so
Docker kills it only after the timeout.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

import docker.errors
import httpx
import pytest

from manager import model_guard
from manager.docker_runtime import GATE, HF_CACHE_TARGET, DockerRuntime, _send_line
from manager.errors import RuntimeFailure, StartFailed
from manager.exit_watch import ExitWatch
from manager.gate import GUARD_SOURCE_ENV, HANDSHAKE_SECONDS
from manager.health import HttpReadinessProbe
from manager.runtime import (
    LABEL_GATED,
    LABEL_MANAGED,
    LABEL_MODEL,
    LABEL_SPEC,
    ContainerRuntime,
    PreparingRuntime,
    spec_hash,
)
from manager.settings import ManagerSettings
from tests import slow_client
from tests.integration.conftest import (
    FAKE_IMAGE,
    SESSION,
    assert_every_path_wants_the_key,
    free_port,
    free_ports,
    image_spec,
    model_name,
    text_spec,
    token,
    upstream_auth,
)

pytestmark = pytest.mark.docker


class InstanceSettings(ManagerSettings):
    """ManagerSettings plus `instance` (HOMELAB_INSTANCE), which DockerRuntime honours."""

    instance: str | None = None


def settings(hf_cache: str, instance: str | None = None, **extra: object) -> ManagerSettings:
    return InstanceSettings(
        manager_token=token(),
        hf_cache=hf_cache,
        model_host="127.0.0.1",
        instance=instance,
        **extra,
    )


@pytest.fixture
def runtime(docker_env: Any, hf_cache: str) -> DockerRuntime:
    return DockerRuntime(settings(hf_cache))


@pytest.fixture
async def probe() -> AsyncIterator[HttpReadinessProbe]:
    async with HttpReadinessProbe(first_delay=0.1, max_interval=0.5) as p:
        yield p


def env_of(container: Any) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])


async def test_docker_runtime_is_a_container_runtime(runtime: DockerRuntime) -> None:
    assert isinstance(runtime, ContainerRuntime)


async def test_start_wait_ready_answer_and_stop(runtime: DockerRuntime, probe, docker_env) -> None:
    port = free_port()
    name = model_name("chat")
    spec = text_spec(
        "chat", port, env={"FAKEVLLM_LOAD_SECONDS": "1"}, args=["--max-model-len", "99"]
    )
    await runtime.start(name, spec)
    container = docker_env.containers.get(spec.container)
    assert container.labels[LABEL_MANAGED] == "true"
    assert container.labels[LABEL_MODEL] == name
    assert container.labels[LABEL_SPEC] == spec_hash(spec)
    assert container.attrs["Config"]["Entrypoint"] == ["python3", "-c", GATE]
    assert container.attrs["Config"]["Cmd"] == [
        "8000", "VLLM_API_KEY", "python3", "-m", "fakevllm",  # the gate, then the image's
        "--model", "fake/chat", "--served-model-name", name,
        "--host", "0.0.0.0", "--port", "8000",
        "--middleware", "homelab_model_guard.ModelGuard", "--max-model-len", "99",
    ]  # fmt: skip
    assert env_of(container)[GUARD_SOURCE_ENV] == model_guard.source()
    assert container.attrs["HostConfig"]["IpcMode"] == "host"
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert env_of(container)["HF_HOME"] == HF_CACHE_TARGET
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts[HF_CACHE_TARGET]["Type"] == "bind"

    await probe.wait_ready(name, spec, runtime)
    auth = await upstream_auth(runtime, name, spec)
    assert env_of(container)["VLLM_API_KEY"] == auth["Authorization"].split()[1]
    # The gate wrote the guard, the server loaded it (as vLLM's --middleware).
    await assert_every_path_wants_the_key(runtime.base_url(spec), auth)
    async with httpx.AsyncClient(base_url=runtime.base_url(spec), trust_env=False) as client:
        client.headers.update(auth)
        reply = await client.post(
            "/v1/chat/completions",
            json={"model": name, "messages": [{"role": "user", "content": "hello over docker"}]},
        )
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == f"[{name}] hello over docker"

    instance = await runtime.inspect(name, spec)
    assert instance is not None and instance.running and instance.model == name
    assert instance.spec_hash == spec_hash(spec)
    owned = {i.model: i for i in await runtime.list_owned()}
    assert owned[name].running
    logs = await runtime.logs(name, spec, tail=200)
    assert "Uvicorn running on http://0.0.0.0:8000" in logs
    assert len((await runtime.logs(name, spec, tail=2)).splitlines()) == 2
    assert await probe.check_alive(name, spec, runtime) is None

    await runtime.stop(name, spec, timeout=5)
    await runtime.settled()  # the removal finishes after stop returns
    assert await runtime.inspect(name, spec) is None
    with pytest.raises(docker.errors.NotFound):
        docker_env.containers.get(spec.container)
    assert name not in {i.model for i in await runtime.list_owned()}
    assert await runtime.logs(name, spec) == ""
    await runtime.stop(name, spec, timeout=5)  # idempotent


async def test_start_reuses_a_matching_container_and_restarts_a_stopped_one(
    runtime: DockerRuntime, probe, docker_env
) -> None:
    port = free_port()
    name = model_name("reuse")
    spec = text_spec("reuse", port)
    await runtime.start(name, spec)
    first = docker_env.containers.get(spec.container).id
    await runtime.start(name, spec)
    assert docker_env.containers.get(spec.container).id == first

    await probe.wait_ready(name, spec, runtime)  # its SIGTERM handler is installed by now
    docker_env.containers.get(spec.container).stop(timeout=5)
    stopped = await runtime.inspect(name, spec)
    assert stopped is not None and not stopped.running and stopped.exit_code == 0

    await runtime.start(name, spec)
    container = docker_env.containers.get(spec.container)
    assert container.id == first and container.status == "running"
    await probe.wait_ready(name, spec, runtime)
    await runtime.stop(name, spec, timeout=5)


async def test_a_container_published_on_another_address_is_replaced(
    docker_env, hf_cache: str
) -> None:
    """Model ports go where HOMELAB_MODEL_BIND_HOST says, else on 127.0.0.1 only (issue
    23: they were on every address): a container published elsewhere by an earlier
    manager (before the upgrade, or with another setting) is recreated, not reused."""
    port = free_port()
    name = model_name("rebind")
    spec = text_spec("rebind", port)
    everywhere = DockerRuntime(settings(hf_cache, model_bind_host="0.0.0.0"))
    await everywhere.prepare(name, spec)
    old = docker_env.containers.get(spec.container)
    assert old.attrs["HostConfig"]["PortBindings"]["8000/tcp"][0]["HostIp"] == "0.0.0.0"
    for _ in range(50):  # until its gate listens (so it is known for a standby one)
        if await gate_answer(port, b"?\n") == b"no\n":
            break
        await asyncio.sleep(0.1)
    runtime = DockerRuntime(settings(hf_cache))
    try:
        await runtime.prepare(name, spec)
        new = docker_env.containers.get(spec.container)
        assert new.id != old.id
        assert [b["HostIp"] for b in new.attrs["HostConfig"]["PortBindings"]["8000/tcp"]] == [
            "127.0.0.1"
        ]
        await runtime.start(name, spec)  # the same setting: released, not recreated
        assert docker_env.containers.get(spec.container).id == new.id
    finally:
        await runtime.stop(name, spec, timeout=5)
        await runtime.aclose()
        await everywhere.aclose()


async def test_start_recreates_a_container_whose_spec_changed(
    runtime: DockerRuntime, docker_env
) -> None:
    port = free_port()
    name = model_name("recreate")
    old = text_spec("recreate", port, env={"MARK": "old"})
    new = text_spec("recreate", port, env={"MARK": "new"})
    await runtime.start(name, old)
    old_id = docker_env.containers.get(old.container).id
    await runtime.start(name, new)
    same_name = docker_env.containers.list(all=True, filters={"name": f"^/{new.container}$"})
    assert len(same_name) == 1
    container = same_name[0]
    assert container.id != old_id
    assert container.labels[LABEL_SPEC] == spec_hash(new)
    assert env_of(container)["MARK"] == "new"
    await runtime.stop(name, new, timeout=1)


async def test_an_old_container_of_the_model_under_another_name_is_replaced(
    runtime: DockerRuntime, docker_env
) -> None:
    port = free_port()
    name = model_name("renamed")
    before = text_spec("renamed-a", port)
    after = text_spec("renamed-b", port)
    await runtime.start(name, before)
    await runtime.start(name, after)  # same port: would fail if the old one still held it
    owned = [
        c.name
        for c in docker_env.containers.list(all=True, filters={"label": f"{LABEL_MODEL}={name}"})
    ]
    assert owned == [after.container]
    await runtime.stop(name, None, timeout=1)  # spec None: found by its model label
    await runtime.settled()  # the removal finishes after stop returns
    assert docker_env.containers.list(all=True, filters={"label": f"{LABEL_MODEL}={name}"}) == []


async def test_a_foreign_container_with_the_name_is_never_touched(
    runtime: DockerRuntime, docker_env
) -> None:
    port = free_port()
    name = model_name("foreign")
    spec = text_spec("foreign", port)
    foreign = docker_env.containers.create(FAKE_IMAGE, ["--port", "8000"], name=spec.container)
    with pytest.raises(RuntimeFailure, match="not managed by homelab-ai"):
        await runtime.start(name, spec)
    with pytest.raises(RuntimeFailure, match="not managed by homelab-ai"):
        await runtime.stop(name, spec, timeout=1)
    assert await runtime.inspect(name, spec) is None
    assert await runtime.logs(name, spec) == ""
    foreign.reload()  # still there, untouched
    assert foreign.status == "created"
    assert spec.container not in {i.model for i in await runtime.list_owned()}


async def test_another_instance_does_not_own_our_containers(docker_env, hf_cache: str) -> None:
    port = free_port()
    mine = DockerRuntime(settings(hf_cache))
    other = DockerRuntime(settings(hf_cache, instance=f"{SESSION}-other"))
    name = model_name("instance")
    spec = text_spec("instance", port)
    await mine.start(name, spec)
    assert name not in {i.model for i in await other.list_owned()}
    assert await other.inspect(name, spec) is None
    with pytest.raises(RuntimeFailure, match="not managed"):
        await other.stop(name, spec, timeout=1)
    await mine.stop(name, spec, timeout=1)


async def test_crash_during_start_fails_with_exit_code_and_logs(
    runtime: DockerRuntime, probe
) -> None:
    port = free_port()
    name = model_name("crash")
    spec = text_spec("crash", port, env={"FAKEVLLM_FAIL_LOAD": "1", "FAKEVLLM_LOAD_SECONDS": "0.5"})
    await runtime.start(name, spec)
    with pytest.raises(StartFailed) as failed:
        await probe.wait_ready(name, spec, runtime)
    assert failed.value.exit_code == 1
    assert "exited with code 1" in failed.value.reason
    assert "Engine core initialization failed" in failed.value.logs
    await runtime.stop(name, spec, timeout=5)
    assert await runtime.inspect(name, spec) is None


async def test_a_server_that_never_becomes_ready_fails_at_start_timeout(
    runtime: DockerRuntime, probe
) -> None:
    port = free_port()
    name = model_name("never")
    spec = text_spec("never", port, env={"FAKEVLLM_NEVER_READY": "1"}, start_timeout=2)
    await runtime.start(name, spec)
    with pytest.raises(StartFailed) as failed:
        await probe.wait_ready(name, spec, runtime)
    assert "start_timeout of 2s" in failed.value.reason
    assert failed.value.exit_code is None
    assert "loading forever" in failed.value.logs
    instance = await runtime.inspect(name, spec)
    assert instance is not None and instance.running  # the caller decides to stop it
    await runtime.stop(name, spec, timeout=5)


async def test_vllm_health_503_means_the_engine_died(runtime: DockerRuntime, probe) -> None:
    port = free_port()
    name = model_name("dead")
    spec = text_spec("dead", port, env={"FAKEVLLM_UNHEALTHY": "1"})
    await runtime.start(name, spec)
    with pytest.raises(StartFailed, match="engine is dead"):
        await probe.wait_ready(name, spec, runtime)
    await runtime.stop(name, spec, timeout=5)


async def test_check_alive_reports_unhealthy_and_crashed_servers(
    runtime: DockerRuntime, probe
) -> None:
    port = free_port()
    name = model_name("alive")
    spec = text_spec("alive", port, env={"FAKEVLLM_CRASH_AFTER": "2"})
    await runtime.start(name, spec)
    await probe.wait_ready(name, spec, runtime)
    assert await probe.check_alive(name, spec, runtime) is None
    auth = await upstream_auth(runtime, name, spec)
    async with httpx.AsyncClient(
        base_url=runtime.base_url(spec), headers=auth, trust_env=False
    ) as client:
        await client.post("/_fake/health", json={"healthy": False})
        assert "engine is dead" in (await probe.check_alive(name, spec, runtime) or "")
        await client.post("/_fake/health", json={"healthy": True})
        assert await probe.check_alive(name, spec, runtime) is None
        for _ in range(2):  # the second inference request is the last one it answers
            ok = await client.post("/v1/completions", json={"prompt": "x"})
            assert ok.status_code == 200
    instance = await runtime.inspect(name, spec)
    for _ in range(50):
        if instance is not None and not instance.running:
            break
        instance = await runtime.inspect(name, spec)
    assert instance is not None and not instance.running and instance.exit_code == 3
    assert await probe.check_alive(name, spec, runtime) == "the server exited with code 3"
    await runtime.stop(name, spec, timeout=5)


async def test_image_model_env_health_and_generation(
    runtime: DockerRuntime, probe, docker_env
) -> None:
    port = free_port()
    name = model_name("img")
    spec = image_spec("img", port, env={"FAKEVLLM_LOAD_SECONDS": "1"}, vae_tiling=True)
    await runtime.start(name, spec)
    container = docker_env.containers.get(spec.container)
    env = env_of(container)
    # A fresh upstream key for this start (what inspect reports and the proxy will send).
    key = env.pop("HOMELAB_IMAGE_API_KEY")
    assert len(key) >= 32 and (await runtime.inspect(name, spec)).api_key == key
    assert {k: v for k, v in env.items() if k.startswith("HOMELAB_IMAGE_")} == {
        "HOMELAB_IMAGE_MODEL": "fake/img",
        "HOMELAB_IMAGE_SERVED_NAME": name,
        "HOMELAB_IMAGE_DTYPE": "bf16",
        "HOMELAB_IMAGE_DEVICE": "cpu",
        "HOMELAB_IMAGE_CPU_OFFLOAD": "false",
        "HOMELAB_IMAGE_ATTENTION_SLICING": "false",
        "HOMELAB_IMAGE_VAE_TILING": "true",
        "HOMELAB_IMAGE_SIZES": "64x64,32x48",
        "HOMELAB_IMAGE_MAX_N": "2",
        "HOMELAB_IMAGE_STEPS": "2",
        "HOMELAB_IMAGE_PORT": "8000",
    }
    # The image server is configured by env only: behind the gate, the image's own command.
    assert container.attrs["Config"]["Cmd"] == [
        "8000", "HOMELAB_IMAGE_API_KEY", "python3", "-m", "fakevllm"
    ]  # fmt: skip

    await probe.wait_ready(name, spec, runtime)
    auth = await upstream_auth(runtime, name, spec)
    async with httpx.AsyncClient(
        base_url=runtime.base_url(spec), headers=auth, trust_env=False
    ) as client:
        reply = await client.post(
            "/v1/images/generations", json={"prompt": "a red fox", "size": "32x48", "n": 2}
        )
    assert reply.status_code == 200
    images = [base64.b64decode(d["b64_json"]) for d in reply.json()["data"]]
    assert len(images) == 2
    for png in images:
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert struct.unpack(">II", png[16:24]) == (32, 48)
    await runtime.stop(name, spec, timeout=5)


async def test_image_server_reporting_failed_fails_the_start(runtime: DockerRuntime, probe) -> None:
    port = free_port()
    name = model_name("imgfail")
    spec = image_spec("imgfail", port, env={"FAKEVLLM_FAIL_LOAD": "1"})
    await runtime.start(name, spec)
    with pytest.raises(StartFailed) as failed:
        await probe.wait_ready(name, spec, runtime)
    assert "pipeline load failed" in failed.value.reason
    assert "pipeline load failed" in failed.value.logs
    await runtime.stop(name, spec, timeout=5)


async def test_a_busy_port_fails_the_start_and_leaves_no_container(
    runtime: DockerRuntime, docker_env
) -> None:
    port = free_port()
    first = text_spec("port-a", port)
    second = text_spec("port-b", port)
    await runtime.start(model_name("port-a"), first)
    with pytest.raises(RuntimeFailure, match="start container"):
        await runtime.start(model_name("port-b"), second)
    assert docker_env.containers.list(all=True, filters={"name": f"^/{second.container}$"}) == []
    await runtime.stop(model_name("port-a"), first, timeout=1)


async def test_a_named_volume_hf_cache_is_mounted(docker_env) -> None:
    port = free_port()
    volume = f"{SESSION}-hf"
    runtime = DockerRuntime(settings(volume))
    name = model_name("vol")
    spec = text_spec("vol", port)
    try:
        await runtime.start(name, spec)
        mounts = docker_env.containers.get(spec.container).attrs["Mounts"]
        assert [(m["Type"], m["Name"]) for m in mounts if m["Destination"] == HF_CACHE_TARGET] == [
            ("volume", volume)
        ]
        await runtime.stop(name, spec, timeout=1)
        await runtime.settled()  # the removal finishes after stop returns
    finally:
        try:
            docker_env.volumes.get(volume).remove(force=True)
        except docker.errors.NotFound:
            pass


@pytest.mark.parametrize("bad", ["relative/path", "/etc/../root", "/a:b", "bad name"])
async def test_an_unusable_hf_cache_is_refused(bad: str, docker_env) -> None:
    port = free_port()
    runtime = DockerRuntime(settings(bad))
    with pytest.raises(RuntimeFailure, match="HOMELAB_HF_CACHE"):
        await runtime.start(model_name("badcache"), text_spec("badcache", port))


async def test_an_image_that_is_nowhere_is_a_runtime_failure(
    runtime: DockerRuntime, docker_env
) -> None:
    port = free_port()
    spec = text_spec("noimage", port, image="homelab-ai/does-not-exist:0")
    with pytest.raises(RuntimeFailure, match="homelab-ai/does-not-exist:0"):
        await runtime.start(model_name("noimage"), spec)
    assert docker_env.containers.list(all=True, filters={"name": f"^/{spec.container}$"}) == []


async def test_a_gpu_model_requests_every_gpu(runtime: DockerRuntime, docker_env) -> None:
    """The device request reaches the engine. Without GPU support (this machine) the engine
    refuses it and no container is left; with it the container carries the request."""
    port = free_port()
    name = model_name("gpu")
    spec = text_spec("gpu", port, gpu=True)
    [request] = runtime.container_config(name, spec)["device_requests"]
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
    try:
        await runtime.start(name, spec)
    except RuntimeFailure as failure:
        assert "gpu" in str(failure).lower()
        assert docker_env.containers.list(all=True, filters={"name": f"^/{spec.container}$"}) == []
    else:
        host = docker_env.containers.get(spec.container).attrs["HostConfig"]
        assert host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
        await runtime.stop(name, spec, timeout=1)


async def test_the_hf_token_reaches_the_container_and_spec_env_wins(docker_env, hf_cache) -> None:
    port = free_port()
    runtime = DockerRuntime(settings(hf_cache, hf_token="hf_abcdefghijklmnop"))
    name = model_name("token")
    spec = text_spec("token", port, env={"HF_HOME": "/models"})
    await runtime.start(name, spec)
    env = env_of(docker_env.containers.get(spec.container))
    assert env["HUGGING_FACE_HUB_TOKEN"] == env["HF_TOKEN"] == "hf_abcdefghijklmnop"
    assert env["HF_HOME"] == "/models"
    assert not any(key.startswith("HOMELAB_") for key in env)  # a text server gets no HOMELAB_*
    await runtime.stop(name, spec, timeout=1)


async def gate_answer(port: int, line: bytes) -> bytes:
    """What the model's port answers to one line (b"" if refused or dropped)."""
    return await _send_line("127.0.0.1", port, line, timeout=5.0)


async def test_prepare_starts_a_standby_container_and_start_only_releases_it(
    runtime: DockerRuntime, probe, docker_env
) -> None:
    port = free_port()
    name = model_name("prepare")
    spec = text_spec("prepare", port)
    await runtime.prepare(name, spec)
    prepared = docker_env.containers.get(spec.container)
    assert prepared.status == "running" and prepared.labels[LABEL_GATED] == "true"
    assert prepared.labels[LABEL_SPEC] == spec_hash(spec)
    key = env_of(prepared)["VLLM_API_KEY"]
    # The gate does not serve: an HTTP request gets its "no", however often it is asked.
    for _ in range(20):
        if (answer := await gate_answer(spec.port, b"GET /health HTTP/1.0\r\n\r\n")) == b"no\n":
            break
        await asyncio.sleep(0.1)  # the gate's Python is still starting
    assert answer == b"no\n"
    assert await gate_answer(spec.port, b"GET /health HTTP/1.0\r\n\r\n") == b"no\n"
    [standby] = [i for i in await runtime.list_owned() if i.model == name]
    assert standby.standby and not standby.running and standby.api_key == key

    await runtime.prepare(name, spec)  # already prepared: nothing to do
    assert docker_env.containers.get(spec.container).id == prepared.id
    await runtime.start(name, spec)
    started = docker_env.containers.get(spec.container)
    assert started.id == prepared.id and started.status == "running"
    await probe.wait_ready(name, spec, runtime)
    assert (await upstream_auth(runtime, name, spec))["Authorization"] == f"Bearer {key}"
    [served] = [i for i in await runtime.list_owned() if i.model == name]
    assert served.running and not served.standby
    assert "homelab-ai gate: released" in started.logs().decode()

    await runtime.prepare(name, spec.model_copy(update={"env": {"MARK": "new"}}))
    assert docker_env.containers.get(spec.container).id == prepared.id, "a server is kept"
    await runtime.stop(name, spec, timeout=5)


async def test_a_wrong_key_does_not_release_the_gate(runtime: DockerRuntime, docker_env) -> None:
    port = free_port()
    name = model_name("wrongkey")
    spec = text_spec("wrongkey", port, env={"FAKEVLLM_LOAD_SECONDS": "0"})
    await runtime.prepare(name, spec)
    key = env_of(docker_env.containers.get(spec.container))["VLLM_API_KEY"]
    for _ in range(50):
        if (answer := await gate_answer(spec.port, b"not-the-key\n")) == b"no\n":
            break
        await asyncio.sleep(0.1)
    assert answer == b"no\n"
    assert await gate_answer(spec.port, key[:-1].encode() + b"\n") == b"no\n"
    assert await gate_answer(spec.port, b"\n") == b"no\n"
    await asyncio.sleep(0.5)  # a released server (no load) would listen by now
    assert await gate_answer(spec.port, b"GET /health HTTP/1.0\r\n\r\n") == b"no\n"
    assert (
        "homelab-ai gate: released" not in docker_env.containers.get(spec.container).logs().decode()
    )
    await runtime.stop(name, spec, timeout=5)
    assert await runtime.inspect(name, spec) is None


async def test_a_client_trickling_at_a_standby_gate_is_cut_and_the_key_still_releases_it(
    runtime: DockerRuntime, probe
) -> None:
    """Through Docker's published port (issue 23: a client trickling bytes after a wrong
    key held the gate open for as long as it trickled): the gate's one deadline per
    handshake (2 s) cuts it, however it trickles; the manager's release works after.
    Counted in bytes (0.1 s apart), never timed."""
    port = free_port()
    name = model_name("trickle")
    spec = text_spec("trickle", port, env={"FAKEVLLM_LOAD_SECONDS": "0"})
    await runtime.prepare(name, spec)
    for _ in range(50):
        if await gate_answer(spec.port, b"?\n") == b"no\n":
            break
        await asyncio.sleep(0.1)
    bound = int(5 * HANDSHAKE_SECONDS / 0.1)
    for first in (b"not-the-key\n", b"n"):
        taken = await asyncio.to_thread(
            slow_client.trickle, "127.0.0.1", spec.port, first, every=0.1, limit=3 * bound
        )
        assert taken < bound, first
    await runtime.start(name, spec)
    await probe.wait_ready(name, spec, runtime)
    await runtime.stop(name, spec, timeout=5)


async def test_a_restarted_runtime_sees_a_standby_container_as_standby_and_can_release_it(
    docker_env, hf_cache, probe
) -> None:
    port = free_port()
    name = model_name("restart-standby")
    spec = text_spec("restart-standby", port, env={"FAKEVLLM_LOAD_SECONDS": "0.2"})
    await DockerRuntime(settings(hf_cache)).prepare(name, spec)
    container = docker_env.containers.get(spec.container)
    later = DockerRuntime(settings(hf_cache))  # the next manager's runtime
    for _ in range(50):
        [seen] = [i for i in await later.list_owned() if i.model == name]
        if seen.standby:
            break
        await asyncio.sleep(0.1)  # until the gate listens it looks like a loading server
    assert seen.standby and not seen.running
    await later.start(name, spec)
    await probe.wait_ready(name, spec, later)
    assert docker_env.containers.get(spec.container).id == container.id
    [served] = [i for i in await DockerRuntime(settings(hf_cache)).list_owned() if i.model == name]
    assert served.running and not served.standby
    await later.stop(name, spec, timeout=5)


async def test_with_standby_off_prepare_only_creates_and_start_releases(
    docker_env, hf_cache, probe
) -> None:
    port = free_port()
    runtime = DockerRuntime(settings(hf_cache, standby=False))
    name = model_name("nostandby")
    spec = text_spec("nostandby", port)
    await runtime.prepare(name, spec)
    assert docker_env.containers.get(spec.container).status == "created"
    await runtime.start(name, spec)
    await probe.wait_ready(name, spec, runtime)
    await runtime.stop(name, spec, timeout=5)


async def test_prepare_replaces_a_standby_container_whose_spec_changed(
    runtime: DockerRuntime, docker_env
) -> None:
    port = free_port()
    name = model_name("reprepare")
    old = text_spec("reprepare", port, env={"MARK": "old"})
    new = text_spec("reprepare", port, env={"MARK": "new"})
    await runtime.prepare(name, old)  # a standby container of the old spec
    old_id = docker_env.containers.get(old.container).id
    for _ in range(50):  # until its gate listens (so it is known for a standby one)
        if await gate_answer(old.port, b"?\n") == b"no\n":
            break
        await asyncio.sleep(0.1)
    await runtime.prepare(name, new)
    container = docker_env.containers.get(new.container)
    assert container.id != old_id and env_of(container)["MARK"] == "new"
    await runtime.stop(name, new, timeout=1)
    assert await runtime.inspect(name, new) is None


async def test_a_start_right_after_a_stop_of_the_same_model_gets_a_fresh_container(
    runtime: DockerRuntime, probe, docker_env
) -> None:
    port = free_port()
    name = model_name("again")
    spec = text_spec("again", port)
    await runtime.start(name, spec)
    await probe.wait_ready(name, spec, runtime)
    first = docker_env.containers.get(spec.container)
    first_key = env_of(first)["VLLM_API_KEY"]
    await runtime.stop(name, spec, timeout=5)
    await runtime.start(name, spec)
    container = docker_env.containers.get(spec.container)
    assert container.id != first.id and container.status == "running"
    assert env_of(container)["VLLM_API_KEY"] != first_key
    await probe.wait_ready(name, spec, runtime)
    await runtime.stop(name, spec, timeout=5)


def _process_state(pid: int) -> str:
    """The host process's state letter ("S", "Z", ...), "gone" once it was reaped."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


async def test_a_stop_returns_once_the_process_exited_seen_from_the_host(
    runtime: DockerRuntime, probe, docker_env
) -> None:
    port = free_port()
    name = model_name("exit")
    spec = text_spec("exit", port)
    await runtime.start(name, spec)
    await probe.wait_ready(name, spec, runtime)
    container = docker_env.containers.get(spec.container)
    pid = container.attrs["State"]["Pid"]
    assert _process_state(pid) in ("S", "R")
    watch = ExitWatch.open(pid, container.id)
    assert watch is not None  # this host shares the engine's kernel and PID namespace
    assert not watch.wait(0.05)
    watch.close()
    assert ExitWatch.open(pid, "0" * 64) is None  # a process of another container: refused
    await runtime.stop(name, spec, timeout=5)
    assert _process_state(pid) in ("Z", "X", "gone")  # exited; its parent may reap it later
    await runtime.settled()
    assert await runtime.inspect(name, spec) is None


async def test_a_swap_with_prepare_starts_the_container_prepared_while_the_other_ran(
    runtime: DockerRuntime, probe, docker_env
) -> None:
    port1, port2 = free_ports(2)
    outgoing, incoming = model_name("swap-out"), model_name("swap-in")
    out_spec, in_spec = text_spec("swap-out", port1), text_spec("swap-in", port2)
    await runtime.start(outgoing, out_spec)
    await probe.wait_ready(outgoing, out_spec, runtime)
    await runtime.prepare(incoming, in_spec)  # while the outgoing one still runs
    prepared = docker_env.containers.get(in_spec.container).id
    assert docker_env.containers.get(out_spec.container).status == "running"
    await runtime.stop(outgoing, out_spec, timeout=5)
    await runtime.start(incoming, in_spec)
    assert await runtime.inspect(outgoing, out_spec) is None
    started = docker_env.containers.get(in_spec.container)
    assert started.id == prepared and started.status == "running"
    await probe.wait_ready(incoming, in_spec, runtime)
    await runtime.stop(incoming, in_spec, timeout=5)


async def test_the_docker_runtime_can_prepare(runtime: DockerRuntime) -> None:
    assert isinstance(runtime, PreparingRuntime)
