"""The launch recipe both runtimes share (manager.launch), the gate program (manager/gate.py),
and a process runtime that needs no docker SDK."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from manager.gate import RELEASED
from manager.launch import server_env, text_server_args
from manager.process_runtime import ProcessRuntime
from manager.runtime import UPSTREAM_KEY_ENV
from manager.settings import ManagerSettings
from manager.spec import EmbeddingModel, ImageModel, TextModel

ROOT = Path(__file__).resolve().parents[3]
GATE_FILE = ROOT / "manager" / "gate.py"
GOOD = "k9F2-pQx7_LmZr4Ws8Tb"


def settings(tmp_path: Path) -> ManagerSettings:
    return ManagerSettings(
        manager_token=GOOD, hf_token="hf_abcdefghijklmnop", log_dir=tmp_path, runtime="process"
    )


IMAGE = ImageModel.model_validate(
    {
        "type": "image",
        "model": "some/diffusers-model",
        "port": 18123,
        "image": "homelab-ai/imageserver:test",
        "container": "homelab-pix",
        "env": {"HOMELAB_IMAGE_QUEUE_LIMIT": "3", "HF_TOKEN": "hf_from_the_spec_env"},
    }
)
TEXT = TextModel.model_validate(
    {
        "type": "text",
        "model": "some/text-model",
        "port": 18124,
        "image": "vllm/vllm-openai:x",
        "container": "homelab-chat",
    }
)
EMBED = EmbeddingModel.model_validate(
    {
        "type": "embedding",
        "model": "/models/all-minilm-l6-v2",
        "port": 18125,
        "image": "vllm/vllm-openai:x",
        "container": "homelab-embed",
        "args": ["--max-model-len", "256"],
    }
)


def test_an_embedding_model_runs_vllm_on_its_pooling_runner(tmp_path: Path) -> None:
    """The same vLLM server as a text model, with `--runner pooling` before the spec's args,
    from the same program (the process runtime's vLLM python) and the same key variable."""
    args = text_server_args("embed", EMBED, "127.0.0.1", 18125)
    assert args[args.index("--runner") + 1] == "pooling"
    assert args[-2:] == ["--max-model-len", "256"]
    assert "--runner" not in text_server_args("chat", TEXT, "127.0.0.1", 18124)
    runtime = ProcessRuntime(settings(tmp_path))
    program = runtime.argv("chat", TEXT)[:3]
    assert runtime.argv("embed", EMBED)[:3] == program
    assert program[1:] == ["-m", "vllm.entrypoints.openai.api_server"]
    env = server_env("embed", EMBED, settings(tmp_path), port=8000, api_key="k")
    assert env[UPSTREAM_KEY_ENV["embedding"]] == "k" == env["VLLM_API_KEY"]
    assert not [k for k in env if k.startswith("HOMELAB_IMAGE_")]


def test_the_docker_runtime_runs_an_embedding_model_on_the_pooling_runner(tmp_path: Path) -> None:
    pytest.importorskip("docker", reason="the docker SDK is the manager extra")
    from manager.docker_runtime import DockerRuntime

    config = DockerRuntime(settings(tmp_path)).container_config("embed", EMBED, api_key="k")
    assert config["image"] == "vllm/vllm-openai:x"
    command = config["command"]
    assert command[command.index("--runner") + 1] == "pooling"
    assert config["environment"]["VLLM_API_KEY"] == "k"


def test_the_process_runtime_needs_no_docker_sdk() -> None:
    """`docker` made unimportable: the process runtime (and the manager's choice of it)
    still load, and nothing of the Docker runtime is imported."""
    code = (
        "import sys\n"
        "sys.modules['docker'] = None  # `import docker` raises ImportError\n"
        "import manager.process_runtime\n"
        "from manager.__main__ import build_runtime\n"
        "from manager.settings import ManagerSettings\n"
        f"runtime = build_runtime(ManagerSettings(manager_token={GOOD!r}, runtime='process'))\n"
        "assert type(runtime).__name__ == 'ProcessRuntime', runtime\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('docker', 'manager.docker',"
        " 'manager.engine')))\n"
        "assert loaded == ['docker'], loaded  # only the poisoned entry\n"
        "try:\n"
        "    import manager.docker_runtime\n"
        "except ImportError:\n"
        "    print('docker runtime refused, process runtime loaded')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "docker runtime refused, process runtime loaded" in result.stdout


def test_an_image_server_launch_sets_the_recipe_in_order(tmp_path: Path) -> None:
    env = server_env("pix", IMAGE, settings(tmp_path), port=8000, host="10.0.0.2", api_key="k")
    assert env["HOMELAB_IMAGE_MODEL"] == "some/diffusers-model"
    assert env["HOMELAB_IMAGE_SERVED_NAME"] == "pix"
    assert (env["HOMELAB_IMAGE_PORT"], env["HOMELAB_IMAGE_HOST"]) == ("8000", "10.0.0.2")
    assert env["HUGGING_FACE_HUB_TOKEN"] == "hf_abcdefghijklmnop"
    assert env["HF_TOKEN"] == "hf_from_the_spec_env"  # the spec's env wins over the token
    assert env["HOMELAB_IMAGE_QUEUE_LIMIT"] == "3"
    assert env[UPSTREAM_KEY_ENV["image"]] == "k"


def test_a_text_server_launch_has_no_image_variables(tmp_path: Path) -> None:
    env = server_env("chat", TEXT, settings(tmp_path), port=8000, api_key="k")
    assert not [k for k in env if k.startswith("HOMELAB_IMAGE_")]
    assert env[UPSTREAM_KEY_ENV["text"]] == "k"


def test_both_runtimes_launch_with_the_same_recipe(tmp_path: Path) -> None:
    pytest.importorskip("docker", reason="the docker SDK is the manager extra")
    from manager.docker_runtime import DockerRuntime
    from manager.runtime import INTERNAL_PORT

    s = settings(tmp_path)
    process_env = ProcessRuntime(s).environment("pix", IMAGE, api_key="k")
    docker_env = DockerRuntime(s).container_config("pix", IMAGE, api_key="k")["environment"]
    ours = server_env("pix", IMAGE, s, port=IMAGE.port, host="127.0.0.1", api_key="k")
    assert {k: process_env[k] for k in ours} == ours
    inside = server_env("pix", IMAGE, s, port=INTERNAL_PORT, api_key="k")
    assert {k: docker_env[k] for k in inside} == inside


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _say(port: int, line: bytes) -> bytes:
    for _ in range(200):  # until the gate listens
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(line)
                conn.shutdown(socket.SHUT_WR)
                return conn.recv(64)
        except ConnectionRefusedError:
            time.sleep(0.05)
    raise AssertionError("the gate never listened")


def test_the_gate_file_runs_as_python_c_and_becomes_the_server() -> None:
    """As DockerRuntime runs it (`python3 -c <file text> <port> <variable> <argv>`): a
    wrong line gets "no", the key gets "ok", then the server argv runs in its place."""
    port = _free_port()
    env = {**os.environ, "GATE_TEST_KEY": "the-key"}
    server = [sys.executable, "-c", "print('the server runs')"]
    gate = subprocess.Popen(
        [sys.executable, "-c", GATE_FILE.read_text(), str(port), "GATE_TEST_KEY", *server],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert _say(port, b"wrong\n") == b"no\n"
        assert _say(port, b"the-key\n") == b"ok\n"
        out, _ = gate.communicate(timeout=30)
    finally:
        gate.kill()
        gate.wait()
    assert out.splitlines() == [RELEASED, "the server runs"]
    assert gate.returncode == 0
