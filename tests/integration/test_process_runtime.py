"""ProcessRuntime + HttpReadinessProbe with the fake server as real host processes.

No Docker needed, so these are not marked `docker`. Ports: free ones of 18100-18199,
picked per test (tests/integration/conftest.py). Every
test stops what it started; the `runtime` fixture also stops anything left in
its registry, and kills the test's helper processes.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from manager.errors import RuntimeFailure, StartFailed
from manager.health import HttpReadinessProbe
from manager.process_runtime import ProcessRuntime, _group_alive
from manager.runtime import ContainerRuntime, spec_hash
from manager.settings import ManagerSettings
from tests.integration.conftest import (
    FAKE_COMMAND,
    FAKE_ENV,
    assert_every_path_wants_the_key,
    free_port,
    free_ports,
    image_spec,
    model_name,
    text_spec,
    token,
    upstream_auth,
)
from wire.procs import REGISTRY_FILE
from wire.procs import is_alive as _alive


def settings(log_dir: Path, **extra: object) -> ManagerSettings:
    """Settings that do not depend on the caller's HOMELAB_* environment.

    `setup.sh test` exports HOMELAB_VLLM_PYTHON (the vLLM venv); the argv test
    must see the interpreters it names, not the developer's.
    """
    extra = {"vllm_python": "python3", "imageserver_python": "python3", **extra}
    return ManagerSettings(manager_token=token(), log_dir=log_dir, model_host="127.0.0.1", **extra)


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    rt = ProcessRuntime(settings(tmp_path / "logs"))
    try:
        yield rt
    finally:
        for instance in await rt.list_owned():
            await rt.stop(instance.model, None, timeout=2)


@pytest.fixture
async def probe() -> AsyncIterator[HttpReadinessProbe]:
    async with HttpReadinessProbe(first_delay=0.1, max_interval=0.5) as p:
        yield p


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen]:
    """An unrelated process in its own group (killed afterwards)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    yield proc
    proc.kill()
    proc.wait(5)


def fake_text(suffix: str, port: int, **env: str):
    return text_spec(suffix, port, command=FAKE_COMMAND, env={**FAKE_ENV, **env})


async def wait_until_gone(pid: int) -> None:
    for _ in range(100):
        if not _alive(pid):
            return
        await asyncio.sleep(0.05)


async def test_process_runtime_is_a_container_runtime(runtime: ProcessRuntime) -> None:
    assert isinstance(runtime, ContainerRuntime)


async def test_argv_and_environment(
    runtime: ProcessRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    port1, port2 = free_ports(2)
    monkeypatch.setenv("HOMELAB_MANAGER_TOKEN", "must-not-leak-to-model-servers")
    default = text_spec("argv", port1, args=["--enforce-eager"])
    argv = runtime.argv(model_name("argv"), default)
    assert argv == [
        "python3", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "fake/argv", "--served-model-name", model_name("argv"),
        "--host", "127.0.0.1", "--port", str(port1),
        "--middleware", "homelab_model_guard.ModelGuard", "--enforce-eager",
    ]  # fmt: skip
    image = image_spec("argv-img", port2)
    assert runtime.argv(model_name("argv-img"), image) == ["python3", "-m", "imageserver"]
    env = runtime.environment(model_name("argv-img"), image)
    assert "HOMELAB_MANAGER_TOKEN" not in env
    assert env["HOMELAB_IMAGE_PORT"] == str(port2)
    assert env["HOMELAB_IMAGE_HOST"] == "127.0.0.1"
    assert env["HOMELAB_IMAGE_SERVED_NAME"] == model_name("argv-img")
    assert env["FAKEVLLM_KIND"] == "image"  # the spec's env
    assert "HF_TOKEN" not in env
    with_token = ProcessRuntime(settings(runtime.registry_path.parent, hf_token="hf_secretvalue1"))
    assert with_token.environment("x", default)["HF_TOKEN"] == "hf_secretvalue1"


async def test_start_ready_answer_logs_stop(runtime: ProcessRuntime, probe) -> None:
    port = free_port()
    name = model_name("proc")
    spec = fake_text("proc", port, FAKEVLLM_LOAD_SECONDS="0.5")
    await runtime.start(name, spec)
    await probe.wait_ready(name, spec, runtime)
    auth = await upstream_auth(runtime, name, spec)
    # The server loaded the guard the runtime wrote (vLLM's --middleware).
    await assert_every_path_wants_the_key(runtime.base_url(spec), auth)
    async with httpx.AsyncClient(base_url=runtime.base_url(spec), trust_env=False) as client:
        assert (await client.post("/v1/completions", json={"prompt": "no key"})).status_code == 401
        reply = await client.post("/v1/completions", json={"prompt": "as a process"}, headers=auth)
    assert reply.json()["choices"][0]["text"] == f"[{name}] as a process"
    # The key travels in the environment (not on the command line, which every local user
    # can read) and is kept in the registry, which only the manager's user may read.
    key = auth["Authorization"].split()[1]
    pid_now = json.loads(runtime.registry_path.read_text())[name]["pid"]
    assert key not in Path(f"/proc/{pid_now}/cmdline").read_text()  # noqa: ASYNC240
    assert stat.S_IMODE(runtime.registry_path.stat().st_mode) == 0o600

    instance = await runtime.inspect(name, spec)
    assert instance is not None and instance.running and instance.spec_hash == spec_hash(spec)
    record = json.loads((runtime.registry_path).read_text())[name]
    pid = record["pid"]
    assert _alive(pid)
    logs = await runtime.logs(name, spec, tail=50)
    assert f"Uvicorn running on http://127.0.0.1:{spec.port}" in logs
    assert '"POST /v1/completions HTTP/1.1" 200' in logs

    await runtime.start(name, spec)  # same spec: reused, not restarted
    assert json.loads(runtime.registry_path.read_text())[name]["pid"] == pid

    await runtime.stop(name, spec, timeout=5)
    assert not _alive(pid)
    assert await runtime.inspect(name, spec) is None
    assert name not in json.loads(runtime.registry_path.read_text())
    await runtime.stop(name, spec, timeout=5)  # idempotent


async def test_a_changed_spec_replaces_the_process(runtime: ProcessRuntime, probe) -> None:
    port = free_port()
    name = model_name("proc-change")
    old = fake_text("proc-change", port, MARK="old")
    new = fake_text("proc-change", port, MARK="new")
    await runtime.start(name, old)
    await probe.wait_ready(name, old, runtime)
    old_pid = json.loads(runtime.registry_path.read_text())[name]["pid"]
    await runtime.start(name, new)
    new_pid = json.loads(runtime.registry_path.read_text())[name]["pid"]
    assert new_pid != old_pid and not _alive(old_pid)
    await probe.wait_ready(name, new, runtime)  # the port was freed for it
    await runtime.stop(name, new, timeout=5)


async def test_crash_during_start_fails_with_exit_code_and_logs(
    runtime: ProcessRuntime, probe
) -> None:
    port = free_port()
    name = model_name("proc-crash")
    spec = fake_text("proc-crash", port, FAKEVLLM_FAIL_LOAD="1")
    await runtime.start(name, spec)
    with pytest.raises(StartFailed) as failed:
        await probe.wait_ready(name, spec, runtime)
    assert failed.value.exit_code == 1
    assert "Engine core initialization failed" in failed.value.logs
    await runtime.stop(name, spec, timeout=2)


async def test_never_ready_fails_at_start_timeout(runtime: ProcessRuntime, probe) -> None:
    port = free_port()
    name = model_name("proc-never")
    spec = fake_text("proc-never", port, FAKEVLLM_NEVER_READY="1").model_copy(
        update={"start_timeout": 1.5}
    )
    await runtime.start(name, spec)
    with pytest.raises(StartFailed, match="start_timeout of 1.5s"):
        await probe.wait_ready(name, spec, runtime)
    await runtime.stop(name, spec, timeout=2)


async def test_a_missing_program_is_a_runtime_failure(runtime: ProcessRuntime) -> None:
    port = free_port()
    spec = text_spec("proc-missing", port, command=["/nonexistent/python-for-vllm"])
    with pytest.raises(RuntimeFailure, match="cannot run '/nonexistent/python-for-vllm'"):
        await runtime.start(model_name("proc-missing"), spec)
    assert await runtime.inspect(model_name("proc-missing"), spec) is None


async def test_stop_kills_the_whole_process_group(
    runtime: ProcessRuntime, probe, tmp_path: Path
) -> None:
    """vLLM runs its engine in a child process: stopping the server must end it too."""
    port = free_port()
    pid_file = tmp_path / "child.pid"
    launcher = (
        "import os, runpy, subprocess, sys;"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid));"
        "sys.argv = ['fakevllm', *sys.argv[1:]];"
        "runpy.run_module('tests.fixtures.fakevllm', run_name='__main__')"
    )
    name = model_name("proc-group")
    spec = text_spec("proc-group", port, command=[sys.executable, "-c", launcher], env=FAKE_ENV)
    await runtime.start(name, spec)
    await probe.wait_ready(name, spec, runtime)
    child = int(pid_file.read_text())
    assert _alive(child)
    await runtime.stop(name, spec, timeout=5)
    await wait_until_gone(child)
    assert not _alive(child)


async def test_a_server_ignoring_sigterm_is_killed_after_the_timeout(
    runtime: ProcessRuntime,
) -> None:
    port = free_port()
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring SIGTERM', flush=True); time.sleep(600)"
    )
    name = model_name("proc-stubborn")
    spec = text_spec("proc-stubborn", port, command=[sys.executable, "-c", stubborn])
    await runtime.start(name, spec)
    for _ in range(100):
        if "ignoring SIGTERM" in await runtime.logs(name, spec):
            break
        await asyncio.sleep(0.05)
    pid = json.loads(runtime.registry_path.read_text())[name]["pid"]
    await runtime.stop(name, spec, timeout=0.5)
    assert not _alive(pid)
    assert await runtime.inspect(name, spec) is None


async def test_a_restarted_manager_adopts_its_processes(
    runtime: ProcessRuntime, probe, tmp_path: Path
) -> None:
    port = free_port()
    name = model_name("proc-adopt")
    spec = fake_text("proc-adopt", port)
    await runtime.start(name, spec)
    await probe.wait_ready(name, spec, runtime)
    pid = json.loads(runtime.registry_path.read_text())[name]["pid"]

    restarted = ProcessRuntime(settings(tmp_path / "logs"))  # same log_dir, no children
    owned = {i.model: i for i in await restarted.list_owned()}
    assert owned[name].running and owned[name].spec_hash == spec_hash(spec)
    assert (await restarted.inspect(name, spec)).running
    await restarted.start(name, spec)  # adopts: same process
    assert json.loads(restarted.registry_path.read_text())[name]["pid"] == pid
    await probe.wait_ready(name, spec, restarted)
    assert await probe.check_alive(name, spec, restarted) is None

    await restarted.stop(name, None, timeout=5)  # not its child: signalled by pid
    await wait_until_gone(pid)
    assert not _alive(pid) and not _group_alive(pid)
    assert await restarted.list_owned() == []


async def test_a_reused_pid_is_never_signalled(
    runtime: ProcessRuntime, bystander: subprocess.Popen
) -> None:
    """A registry entry whose pid now belongs to another process (start time differs)."""
    runtime.registry_path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "pid": bystander.pid,
        "spec_hash": "0" * 16,
        "started": "1",  # not the bystander's start time
        "argv": ["vllm"],
        "log": "x.log",
    }
    runtime.registry_path.write_text(json.dumps({model_name("ghost"): entry}))
    owned = await runtime.list_owned()
    assert [(i.model, i.running) for i in owned] == [(model_name("ghost"), False)]
    await runtime.stop(model_name("ghost"), None, timeout=0.5)
    assert bystander.poll() is None  # untouched
    assert await runtime.list_owned() == []


async def test_a_corrupt_registry_is_ignored(runtime: ProcessRuntime) -> None:
    runtime.registry_path.parent.mkdir(parents=True, exist_ok=True)
    runtime.registry_path.write_text("{not json")
    assert await runtime.list_owned() == []
    assert runtime.registry_path.name == REGISTRY_FILE


async def test_image_kind_as_a_process(runtime: ProcessRuntime, probe) -> None:
    port = free_port()
    name = model_name("proc-img")
    spec = image_spec(
        "proc-img",
        port,
        command=FAKE_COMMAND,
        env={**FAKE_ENV, "FAKEVLLM_LOAD_SECONDS": "0.5"},
    )
    await runtime.start(name, spec)
    await probe.wait_ready(name, spec, runtime)
    async with httpx.AsyncClient(base_url=runtime.base_url(spec), trust_env=False) as client:
        health = (await client.get("/health")).json()
    assert health["status"] == "ready" and health["model"] == name
    pid = json.loads(runtime.registry_path.read_text())[name]["pid"]
    await runtime.stop(name, spec, timeout=5)
    assert not _alive(pid)


async def test_check_alive_sees_a_crash(runtime: ProcessRuntime, probe) -> None:
    port = free_port()
    name = model_name("proc-alive")
    spec = fake_text("proc-alive", port, FAKEVLLM_CRASH_AFTER="1")
    await runtime.start(name, spec)
    await probe.wait_ready(name, spec, runtime)
    auth = await upstream_auth(runtime, name, spec)
    async with httpx.AsyncClient(
        base_url=runtime.base_url(spec), headers=auth, trust_env=False
    ) as client:
        await client.post("/v1/embeddings", json={"input": "bye"})
    reason = None
    for _ in range(50):
        reason = await probe.check_alive(name, spec, runtime)
        if reason:
            break
        await asyncio.sleep(0.05)
    assert reason == "the server exited with code 3"
    assert (await runtime.inspect(name, spec)).exit_code == 3
    await runtime.stop(name, spec, timeout=2)


async def test_an_unregistered_server_of_this_manager_is_found_and_registered(
    runtime: ProcessRuntime, probe: HttpReadinessProbe, tmp_path: Path
) -> None:
    """A manager killed between spawn and registry write left a server: the next one finds
    it by the owner mark in its environment (regression: it stayed an invisible orphan)."""
    port = free_port()
    name = model_name("proc-stray")
    spec = fake_text("proc-stray", port)
    runtime.write_guard()  # as a spawn does before it starts the server
    stray = subprocess.Popen(  # noqa: ASYNC220 (a plain child, as a dead manager left it)
        runtime.argv(name, spec),
        env=runtime.environment(name, spec),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(0.3)
        owned = {inst.model: inst for inst in await runtime.list_owned()}
        assert owned[name].running and owned[name].spec_hash == spec_hash(spec)
        registry = json.loads((tmp_path / "logs" / REGISTRY_FILE).read_text())
        assert registry[name]["pid"] == stray.pid
        await runtime.stop(name, spec, timeout=2)
        stray.wait(5)
        assert not _group_alive(stray.pid)
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait(5)


async def test_a_port_in_use_by_another_program_fails_the_start(runtime: ProcessRuntime) -> None:
    """Readiness must never take another program's answer for the new server's."""
    port = free_port()
    import socket

    spec = fake_text("proc-busy", port)
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", port))
        other.listen(1)
        with pytest.raises(RuntimeFailure, match="already in use"):
            await runtime.start(model_name("proc-busy"), spec)
