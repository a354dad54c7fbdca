"""`python -m manager`: schema, check, and serve's start-up wiring and error exits."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import manager.__main__ as cli
from manager.scheduler import Scheduler
from manager.spec import json_schema

ROOT = Path(__file__).resolve().parents[3]
GOOD = "k9F2-pQx7_LmZr4Ws8Tb"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    return subprocess.run(
        [sys.executable, "-m", "manager", *args],
        cwd=ROOT,
        env=clean | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_schema_prints_the_json_schema():
    result = run_cli("schema")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json_schema()


def test_check_accepts_the_repository_file():
    result = run_cli("check", "models.json")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_reports_file_key_and_reason_without_traceback(tmp_path):
    bad = tmp_path / "models.json"
    bad.write_text(
        json.dumps(
            {"a": {"type": "text", "container": "c", "port": 80, "image": "x/y:1", "model": "m"}}
        )
    )
    result = run_cli("check", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"{bad}: key 'a.port': ")
    assert "Traceback" not in result.stderr


def test_serve_without_a_token_exits_2_naming_the_variable():
    result = run_cli("serve")
    assert result.returncode == 2
    assert "HOMELAB_MANAGER_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_bad_models_file_exits_1(tmp_path):
    bad = tmp_path / "models.json"
    bad.write_text("{")
    result = run_cli(env={"HOMELAB_MANAGER_TOKEN": GOOD, "HOMELAB_MODELS_FILE": str(bad)})
    assert result.returncode == 1
    assert result.stderr.startswith(f"{bad}: is not valid JSON")
    assert "Traceback" not in result.stderr


class RecordingRuntime:
    """Stands in for DockerRuntime/ProcessRuntime at construction (the scheduler is not run)."""

    def __init__(self, settings) -> None:
        self.settings = settings


def test_serve_wires_settings_runtime_probe_and_scheduler(monkeypatch):
    captured: dict = {}
    fake_runtime_module = types.ModuleType("fake_runtime_module")
    fake_runtime_module.Runtime = RecordingRuntime
    monkeypatch.setitem(sys.modules, "fake_runtime_module", fake_runtime_module)
    monkeypatch.setitem(cli.RUNTIMES, "process", ("fake_runtime_module", "Runtime"))
    monkeypatch.setattr(cli.ManagerServer, "run", lambda self: captured.update(server=self))
    monkeypatch.setenv("HOMELAB_MANAGER_TOKEN", GOOD)
    monkeypatch.setenv("HOMELAB_RUNTIME", "process")
    monkeypatch.setenv("HOMELAB_MODELS_FILE", str(ROOT / "models.json"))
    monkeypatch.setenv("HOMELAB_MANAGER_PORT", "18990")
    monkeypatch.setenv("HOMELAB_ADVERTISE_HOST", "10.0.0.5")

    assert cli.main(["serve"]) == 0
    server = captured["server"]
    assert (server.config.host, server.config.port) == ("0.0.0.0", 18990)
    assert server.config.timeout_graceful_shutdown is not None
    scheduler: Scheduler = server.config.app.state.scheduler
    assert server.scheduler is scheduler
    assert isinstance(scheduler.runtime, RecordingRuntime)
    assert scheduler.runtime.settings.runtime == "process"
    assert type(scheduler.probe).__name__ == "HttpReadinessProbe"
    assert scheduler.config.advertise_host == "10.0.0.5"
    assert "llama3-8b" in scheduler.catalogue.models
    assert scheduler.host_budget_mib is not None  # half of /proc/meminfo: the warm tier is on
    assert type(scheduler._warm).__name__ == "HttpWarmControl"


def test_the_host_budget_setting_wins_and_zero_turns_the_warm_tier_off(monkeypatch):
    monkeypatch.setenv("HOMELAB_MANAGER_TOKEN", GOOD)

    class Engine:
        def host_total_mib(self) -> int | None:
            return 8000

    assert cli.host_budget_of(cli.ManagerSettings(), Engine()) == (
        4000,
        "half of the 8000 MiB the runtime sees",
    )
    assert cli.host_budget_of(cli.ManagerSettings(host_budget_mib=1234), Engine())[0] == 1234
    assert cli.host_budget_of(cli.ManagerSettings(host_budget_mib=0), Engine())[0] is None


@pytest.mark.parametrize(
    ("env", "access_log", "level"),
    [
        ({}, False, "info"),
        ({"HOMELAB_ACCESS_LOG": "true", "HOMELAB_LOG_LEVEL": "debug"}, True, "debug"),
    ],
)
def test_serve_access_log_is_off_unless_asked_and_log_level_comes_from_settings(
    monkeypatch, env, access_log, level
):
    captured: dict = {}
    fake_runtime_module = types.ModuleType("fake_runtime_module")
    fake_runtime_module.Runtime = RecordingRuntime
    monkeypatch.setitem(sys.modules, "fake_runtime_module", fake_runtime_module)
    monkeypatch.setitem(cli.RUNTIMES, "process", ("fake_runtime_module", "Runtime"))
    monkeypatch.setattr(cli.ManagerServer, "run", lambda self: captured.update(server=self))
    monkeypatch.delenv("HOMELAB_ACCESS_LOG", raising=False)
    monkeypatch.delenv("HOMELAB_LOG_LEVEL", raising=False)
    monkeypatch.setenv("HOMELAB_MANAGER_TOKEN", GOOD)
    monkeypatch.setenv("HOMELAB_RUNTIME", "process")
    monkeypatch.setenv("HOMELAB_MODELS_FILE", str(ROOT / "models.json"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    assert cli.main(["serve"]) == 0
    config = captured["server"].config
    assert config.access_log is access_log
    assert config.log_level == level


def test_an_unloadable_runtime_is_a_clean_exit(monkeypatch, capsys):
    monkeypatch.setitem(cli.RUNTIMES, "docker", ("no_such_module_here", "Runtime"))
    monkeypatch.setenv("HOMELAB_MANAGER_TOKEN", GOOD)
    monkeypatch.setenv("HOMELAB_MODELS_FILE", str(ROOT / "models.json"))
    assert cli.main(["serve"]) == 1
    assert "cannot load no_such_module_here.Runtime" in capsys.readouterr().err


@pytest.mark.parametrize("runtime", ["docker", "process"])
def test_the_real_runtime_classes_exist_with_the_agreed_names(runtime):
    import importlib

    module, attr = cli.RUNTIMES[runtime]
    assert callable(getattr(importlib.import_module(module), attr))


def test_gpu_check_is_off_with_a_zero_timeout(monkeypatch):
    monkeypatch.setenv("HOMELAB_MANAGER_TOKEN", GOOD)
    from manager.settings import ManagerSettings

    assert cli.build_gpu_check(ManagerSettings(gpu_release_timeout=0)) is None
    assert cli.build_gpu_check(ManagerSettings()) is not None


async def test_shutdown_is_not_held_by_an_open_event_stream_or_a_waiting_request():
    import asyncio

    import httpx
    import uvicorn
    from manager_fakes import FakeProbe, FakeRuntime, catalogue, until

    from manager.api import create_app
    from manager.settings import ManagerSettings

    probe = FakeProbe()
    probe.hold("alpha")  # a lease request that would wait "forever"
    scheduler = Scheduler(catalogue(), FakeRuntime(), probe)
    app = create_app(scheduler, ManagerSettings(manager_token=GOOD, sse_heartbeat=60))
    # A long grace: only the early scheduler.close() can end the shutdown quickly.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=600
    )
    server = cli.ManagerServer(config, scheduler)
    serving = asyncio.create_task(server.serve())
    await until(lambda: server.started, "the server to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    headers = {"Authorization": f"Bearer {GOOD}"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, trust_env=False, timeout=30
    ) as client:
        lease = asyncio.create_task(client.post("/v1/leases", json={"model": "alpha"}))
        async with client.stream("GET", "/v1/events") as stream:
            lines = stream.aiter_lines()
            assert await anext(lines) == "event: snapshot"
            await until(lambda: scheduler.waiting_count() == 1, "the lease request to queue")
            server.should_exit = True
            await until(serving.done, "the server to shut down")
        response = await lease
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "the manager is shutting down"


def test_the_real_runtimes_accept_manager_settings(tmp_path):
    """B's runtimes are built from these settings exactly as `serve` builds them."""
    from manager_fakes import catalogue

    from manager.launch import hf_token
    from manager.settings import ManagerSettings

    settings = ManagerSettings(manager_token=GOOD, log_dir=tmp_path, hf_token="hf_abcdefghijklmnop")
    alpha = catalogue().models["alpha"]
    for runtime in ("docker", "process"):
        built = cli.build_runtime(settings.model_copy(update={"runtime": runtime}))
        assert built.base_url(alpha) == "http://127.0.0.1:18001"
    assert hf_token(settings) == "hf_abcdefghijklmnop"
