"""The guard every vLLM launch loads (manager/model_guard.py) and how both runtimes
launch vLLM with it; where the Docker runtime publishes model ports (issue 23).

The guard is a pure ASGI middleware: driven here with hand-made scopes (fakes in the
unit tier); tests/e2e/test_vllm_cpu.py drives it inside the real vLLM, and
tests/integration/test_docker_runtime.py through the real gate on the Docker engine."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from manager import gate, model_guard
from manager.launch import text_server_args
from manager.model_guard import MIDDLEWARE, ModelGuard
from manager.process_runtime import ProcessRuntime
from manager.runtime import guarded, spec_hash
from manager.settings import ManagerSettings
from manager.spec import EmbeddingModel, ImageModel, TextModel
from wire.errors import MODEL_SERVER, envelope
from wire.model_server import UPSTREAM_KEY_ENV, VLLM_API_KEY_ENV

GOOD = "k9F2-pQx7_LmZr4Ws8Tb"
KEY = "upstream-" + "Zq7" * 10
TEXT = TextModel.model_validate(
    {"type": "text", "model": "m", "port": 18124, "image": "vllm/vllm-openai:x", "container": "c"}
)
EMBED = EmbeddingModel.model_validate(
    {
        "type": "embedding",
        "model": "e",
        "port": 18125,
        "image": "vllm/vllm-openai:x",
        "container": "d",
    }
)
GGUF = TextModel.model_validate(
    {
        "type": "text",
        "backend": "llama.cpp",
        "model": "/models/x.gguf",
        "port": 18126,
        "image": "homelab-ai/llamacpp:x",
        "container": "g",
    }
)
IMAGE = ImageModel.model_validate(
    {
        "type": "image",
        "model": "p",
        "port": 18127,
        "image": "homelab-ai/imageserver:x",
        "container": "i",
    }
)


def settings(tmp_path: Path, **extra: Any) -> ManagerSettings:
    return ManagerSettings(manager_token=GOOD, log_dir=tmp_path, **extra)


def call(
    guard: ModelGuard, kind: str = "http", path: str = "/", **headers: str
) -> tuple[bool, list]:
    """(whether the guard passed the scope on to the app it wraps, what it sent itself)."""
    passed: list[bool] = []
    sent: list[dict] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        passed.append(True)

    guard.app = app

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": kind,
        "path": path,
        "method": "GET",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(guard(scope, receive, send))
    return bool(passed), sent


# ---- the guard ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/invocations", "/tokenize", "/metrics", "/health", "/", "/x"]
)
def test_the_guard_refuses_every_path_without_the_key_and_passes_it_with(path: str) -> None:
    guard = ModelGuard(None, key=KEY)
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
        {"X-Api-Key": KEY},
    ):
        passed, sent = call(guard, path=path, **headers)
        assert not passed, headers
        assert sent[0]["status"] == 401
        assert dict(sent[0]["headers"])[b"www-authenticate"] == b"Bearer"
        assert json.loads(sent[1]["body"])["error"]["code"] == "invalid_api_key"
    assert call(guard, path=path, Authorization=f"Bearer {KEY}") == (True, [])
    assert call(guard, path=path, authorization=f"bearer {KEY}") == (True, [])


def test_the_guard_answers_with_the_image_servers_envelope() -> None:
    _, sent = call(ModelGuard(None, key=KEY))
    expected = envelope(
        "Missing or wrong upstream key: only the homelab-ai proxy may call this server.",
        type="authentication_error",
        code="invalid_api_key",
        source=MODEL_SERVER,
    )
    assert json.loads(sent[1]["body"]) == expected
    assert int(dict(sent[0]["headers"])[b"content-length"]) == len(sent[1]["body"])


def test_a_websocket_without_the_key_is_closed_and_lifespan_passes() -> None:
    guard = ModelGuard(None, key=KEY)
    assert call(guard, "websocket", "/v1/realtime") == (
        False,
        [{"type": "websocket.close", "code": 1008}],
    )
    assert call(guard, "websocket", "/v1/realtime", Authorization=f"Bearer {KEY}")[0]
    assert call(guard, "lifespan")[0]


def test_the_guard_reads_vllms_key_variable_and_without_one_refuses_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert model_guard.KEY_ENV == VLLM_API_KEY_ENV == UPSTREAM_KEY_ENV["text"]
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    assert call(ModelGuard(None), Authorization=f"Bearer {KEY}")[0]
    monkeypatch.delenv("VLLM_API_KEY")
    assert not call(ModelGuard(None), Authorization="Bearer ")[0]
    assert not call(ModelGuard(None))[0]


def test_the_guard_runs_as_a_module_of_its_own_text(tmp_path: Path) -> None:
    """What the runtimes write is importable alone (no homelab-ai package on the path)."""
    (tmp_path / f"{model_guard.MODULE}.py").write_text(model_guard.source())
    sys.path.insert(0, str(tmp_path))
    try:
        module = __import__(model_guard.MODULE)
        assert module.ModelGuard is not ModelGuard
        assert not call(module.ModelGuard(None, key=KEY))[0]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(model_guard.MODULE, None)


# ---- launching vLLM with it ------------------------------------------------------------------
def test_every_vllm_launch_names_the_guard_and_no_other_server_does() -> None:
    for spec in (TEXT, EMBED):
        args = text_server_args("x", spec, "127.0.0.1", spec.port)
        assert (
            args[args.index("--middleware") + 1] == MIDDLEWARE == "homelab_model_guard.ModelGuard"
        )
        assert guarded(spec)
    assert "--middleware" not in text_server_args("g", GGUF, "127.0.0.1", GGUF.port)
    assert not guarded(GGUF) and not guarded(IMAGE)


def test_the_process_runtime_puts_the_written_guard_first_on_vllms_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    runtime = ProcessRuntime(settings(tmp_path, runtime="process"))
    runtime.write_guard()
    first = runtime.environment("x", TEXT, KEY)["PYTHONPATH"].split(":")
    assert first == [str(tmp_path.resolve() / "guard"), "/elsewhere"]
    assert (Path(first[0]) / "homelab_model_guard.py").read_text() == model_guard.source()
    assert runtime.environment("g", GGUF, KEY).get("PYTHONPATH") == "/elsewhere"


def test_the_docker_runtime_hands_the_guard_to_the_gate_of_vllm_containers_only(
    tmp_path: Path,
) -> None:
    pytest.importorskip("docker", reason="the docker SDK is the manager extra")
    from manager.docker_runtime import DockerRuntime

    runtime = DockerRuntime(settings(tmp_path))
    argv = (["python3", "-m", "server"], [])
    for spec, carries in ((TEXT, True), (EMBED, True), (GGUF, False), (IMAGE, False)):
        env = runtime.container_config("x", spec, KEY, argv)["environment"]
        assert (env.get(gate.GUARD_SOURCE_ENV) == model_guard.source()) is carries, spec


def test_a_vllm_spec_hash_changes_with_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """A vLLM server launched before the guard, or with another text of it, is replaced."""
    before = spec_hash(TEXT), spec_hash(GGUF), spec_hash(IMAGE)
    monkeypatch.setattr(model_guard, "revision", lambda: "another")
    assert spec_hash(TEXT) != before[0]
    assert (spec_hash(GGUF), spec_hash(IMAGE)) == before[1:]


# ---- where Docker publishes model ports -----------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "host"),
    [
        ({}, "127.0.0.1"),
        ({"manager_host": "0.0.0.0"}, "127.0.0.1"),
        ({"model_bind_host": "192.168.1.50"}, "192.168.1.50"),
        ({"model_bind_host": "0.0.0.0"}, "0.0.0.0"),
    ],
)
def test_docker_publishes_model_ports_on_the_bind_host_else_loopback_only(
    tmp_path: Path, extra: dict[str, str], host: str
) -> None:
    pytest.importorskip("docker", reason="the docker SDK is the manager extra")
    from manager.docker_runtime import DockerRuntime

    config = DockerRuntime(settings(tmp_path, **extra)).container_config("x", TEXT, KEY)
    assert config["ports"] == {"8000/tcp": (host, TEXT.port)}
