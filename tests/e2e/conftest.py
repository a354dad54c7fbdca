"""End-to-end fixtures: a REAL vLLM (its CPU build) serving a REAL small model.

Where things are (``./setup.sh deps`` makes both and writes them to
``$HOMELAB_STATE_DIR/env``):

- ``HOMELAB_VLLM_PYTHON``: the python of the vLLM CPU venv
  (default ``$HOMELAB_STATE_DIR/vllm-venv/bin/python``);
- ``HOMELAB_TEXT_MODEL_DIR``: SmolLM2-135M-Instruct as a bf16 transformers folder
  (default ``$HOMELAB_STATE_DIR/models/smollm2-135m-instruct``);
- ``HOMELAB_STATE_DIR`` defaults to ``~/.local/share/homelab-ai``.

Fixtures (all session-scoped, so vLLM starts once per test session, ~35 s):

- ``vllm_runtime``: the two paths above as a ``VllmRuntime``; SKIPS (with the
  reason and the fix) when either is missing. Use it to have the manager start
  vLLM itself (process runtime).
- ``vllm_server``: a running ``python -m vllm.entrypoints.openai.api_server`` on
  127.0.0.1 (a free port of 18200-18299, picked at random), serving the model as
  ``smollm2``, launched by the manager's process-runtime recipe (``ProcessRuntime.argv``
  and ``.environment``: the guard middleware ``manager.model_guard`` that refuses every
  path without the key, and the key, made for this session, in ``VLLM_API_KEY``): the
  fixture waits until the port answers with that key and refuses without it, so a
  server another run left on the port is never taken for ours. FAILS (not
  skips) when the server exits or is not healthy in time, with its log tail.
  Torn down (process group: TERM, then KILL) at the end of the session.
- ``openai_client``: the real ``openai`` SDK pointed at ``vllm_server``, with its key.

The real-model stacks (tests/e2e/test_mcp_real_models.py,
tests/e2e/browser/test_real_models.py) serve ``tiny_sd`` (tests/conftest.py) as ``tiny-sd``.

The server's log is kept in ``test-artifacts/vllm-server-PORT.log`` (the guard module
in ``test-artifacts/vllm-server-PORT/guard/``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests import tools

REPO_ROOT = Path(__file__).resolve().parents[2]
ROUTES = Path(__file__).with_name("vllm_routes.py")
ARTIFACTS = REPO_ROOT / "test-artifacts"
SERVED_NAME = "smollm2"
PORT_RANGE = range(18200, 18300)
# How long vLLM may take to load (about 35 s here). A deadline, not a performance
# assertion: it only keeps a broken start from hanging the session. Override with
# HOMELAB_VLLM_START_TIMEOUT on a slow machine.
START_TIMEOUT_S = float(os.environ.get("HOMELAB_VLLM_START_TIMEOUT", "600"))
STOP_TIMEOUT_S = 30.0
CPU_ARGS = ["--enforce-eager", "--gpu-memory-utilization", "0.2", "--max-model-len", "2048"]
"""vLLM's arguments for the CPU build: on the CPU backend ``--gpu-memory-utilization`` is
the share of RAM reserved for the KV cache; the default 0.92 fails."""
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
}
"""Every phone-home of a model server switched off."""


def state_dir() -> Path:
    """``$HOMELAB_STATE_DIR``, default ``~/.local/share/homelab-ai`` (as in setup.sh)."""
    raw = os.environ.get("HOMELAB_STATE_DIR")
    return Path(raw).expanduser() if raw else Path.home() / ".local" / "share" / "homelab-ai"


def free_port_base(bases: range, offsets: tuple[int, ...]) -> int:
    """A port N of `bases` with N + each of `offsets` free on 127.0.0.1 (the demo's ports)."""
    for base in bases:
        if all(_port_free(base + offset) for offset in offsets):
            return base
    raise RuntimeError(f"no free demo ports in {bases.start}-{bases.stop + max(offsets)}")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def vllm_python_path() -> Path:
    """``$HOMELAB_VLLM_PYTHON``, default the python of the venv setup.sh builds."""
    raw = os.environ.get("HOMELAB_VLLM_PYTHON")
    return Path(raw).expanduser() if raw else state_dir() / "vllm-venv" / "bin" / "python"


def text_model_path() -> Path:
    """``$HOMELAB_TEXT_MODEL_DIR``, default the folder scripts/prepare_text_model.py writes."""
    raw = os.environ.get("HOMELAB_TEXT_MODEL_DIR")
    if raw:
        return Path(raw).expanduser()
    return state_dir() / "models" / "smollm2-135m-instruct"


@dataclass(frozen=True)
class VllmRuntime:
    """Where the real vLLM and the real model are on this machine."""

    python: Path
    model_dir: Path
    served_name: str = SERVED_NAME

    def server_command(
        self, port: int, host: str = "127.0.0.1", api_key: str | None = None
    ) -> list[str]:
        """The argv that starts vLLM's OpenAI server for the model on host:port (with
        ``api_key``: ``/v1`` only for its holder).

        ``vllm serve`` fails on a package-metadata lookup in the CPU build, hence
        the module entry point; `CPU_ARGS` for the CPU backend.
        """
        return [
            str(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.served_name,
            *CPU_ARGS,
            "--host",
            host,
            "--port",
            str(port),
            *(["--api-key", api_key] if api_key else []),
        ]


@dataclass(frozen=True)
class VllmServer:
    """A running vLLM server: ``base_url`` ends in ``/v1`` (what the openai SDK wants)."""

    runtime: VllmRuntime
    host: str
    port: int
    log_path: Path
    api_key: str = ""
    """What every path wants as ``Authorization: Bearer`` (made for this session)."""

    @property
    def auth(self) -> dict[str, str]:
        """The ``Authorization`` header with the key."""
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def model(self) -> str:
        return self.runtime.served_name


def offline_env() -> dict[str, str]:
    """The environment for a model server: ours, with every phone-home switched off."""
    return {**os.environ, **OFFLINE}


def free_port(candidates: range = PORT_RANGE) -> int:
    """A port of ``candidates`` nothing listens on now, picked at random
    (`tests.tools.free_ports`), so two runs on one machine rarely reach for the same."""
    return tools.free_ports(candidates, 1)[0]


def is_ours(client: httpx.Client, server: VllmServer) -> bool:
    """Whether the server answering at ``server``'s address is the one we started: it
    lists our served name to our key and refuses a request without it."""
    models = client.get(f"{server.base_url}/models", headers=server.auth)
    if models.status_code != 200:
        return False
    if server.model not in [m.get("id") for m in models.json().get("data", [])]:
        return False
    return client.get(f"{server.base_url}/models").status_code == 401


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop ``proc`` and every process it started (vLLM forks an engine core).

    Blocks up to ``timeout`` s after SIGTERM, then SIGKILLs the group. Idempotent.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    # The leader may be gone while children linger in its group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def wait_until_healthy(
    proc: subprocess.Popen[bytes], server: VllmServer, deadline_s: float
) -> None:
    """Poll ``GET /health`` until 200 and the answer is ours (`is_ours`). Raises
    RuntimeError if the process exits or time runs out.

    While vLLM loads, its port refuses connections; that is not an error.
    """
    started = time.monotonic()
    with httpx.Client(timeout=5.0) as client:
        while True:
            code = proc.poll()
            if code is not None:
                raise RuntimeError(f"vLLM exited with code {code} while loading")
            try:
                health = client.get(f"{server.root_url}/health", headers=server.auth)
                if health.status_code == 200 and is_ours(client, server):
                    return
            except (httpx.TransportError, ValueError):
                pass
            if time.monotonic() - started > deadline_s:
                raise RuntimeError(f"vLLM not healthy after {deadline_s:.0f} s")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def vllm_runtime() -> VllmRuntime:
    """The vLLM CPU venv and the small model; skips with the fix when either is missing."""
    python, model_dir = vllm_python_path(), text_model_path()
    if not python.exists():
        pytest.skip(f"no vLLM CPU venv at {python} (HOMELAB_VLLM_PYTHON); run ./setup.sh deps")
    if not (model_dir / "config.json").is_file():
        pytest.skip(
            f"no text model at {model_dir} (HOMELAB_TEXT_MODEL_DIR); run ./setup.sh deps "
            "or python scripts/prepare_text_model.py"
        )
    return VllmRuntime(python=python, model_dir=model_dir)


def process_runtime_launch(
    runtime: VllmRuntime, port: int, api_key: str, work: Path
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment the manager's process runtime launches vLLM with for the
    model on 127.0.0.1:`port` (`ProcessRuntime.argv` / `.environment`: the guard
    middleware, written into `work`/guard, and `api_key` in ``VLLM_API_KEY``), with the
    arguments of `VllmRuntime.server_command` and every phone-home off."""
    from manager.process_runtime import ProcessRuntime
    from manager.settings import ManagerSettings
    from manager.spec import TextModel

    settings = ManagerSettings(
        manager_token="e2e-" + secrets.token_urlsafe(24), runtime="process", log_dir=work
    )
    spec = TextModel.model_validate(
        {
            "type": "text",
            "container": f"e2e-vllm-{port}",
            "port": port,
            "image": "vllm/vllm-openai:v0.32.0",
            "model": str(runtime.model_dir),
            "command": [str(runtime.python), "-m", "vllm.entrypoints.openai.api_server"],
            "args": CPU_ARGS,
            "gpu": False,
        }
    )
    launcher = ProcessRuntime(settings)
    launcher.write_guard()
    env = launcher.environment(runtime.served_name, spec, api_key)
    env.update(OFFLINE)
    return launcher.argv(runtime.served_name, spec), env


@pytest.fixture(scope="session")
def vllm_server(vllm_runtime: VllmRuntime) -> Iterator[VllmServer]:
    """A real vLLM OpenAI server for the whole session; see the module docstring."""
    host, port = "127.0.0.1", free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"vllm-server-{port}.log"
    key = "e2e-" + secrets.token_urlsafe(24)
    server = VllmServer(runtime=vllm_runtime, host=host, port=port, log_path=log_path, api_key=key)
    argv, env = process_runtime_launch(vllm_runtime, port, key, ARTIFACTS / f"vllm-server-{port}")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, so teardown reaches the engine core
        )
    try:
        try:
            wait_until_healthy(proc, server, START_TIMEOUT_S)
        except RuntimeError as exc:
            stop_process_group(proc)
            pytest.fail(f"{exc}; last lines of {log_path}:\n{log_tail(log_path)}", pytrace=False)
        yield server
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="session")
def openai_client(vllm_server: VllmServer):
    """The real ``openai`` SDK talking straight to ``vllm_server`` (no retries)."""
    import openai

    client = openai.OpenAI(
        base_url=vllm_server.base_url, api_key=vllm_server.api_key, max_retries=0, timeout=120.0
    )
    yield client
    client.close()


QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def vllm_paths(server: VllmServer) -> set[str]:
    """Every path this vLLM has: its app's routes and mounts and every router it ships
    (tests/e2e/vllm_routes.py, run with vLLM's Python), and its OpenAPI document."""
    runtime = server.runtime
    listed = subprocess.run(
        [str(runtime.python), str(ROUTES), "--model", str(runtime.model_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**OFFLINE, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    routes = set(json.loads(listed.stdout.splitlines()[-1]))
    document = httpx.get(f"{server.root_url}/openapi.json", headers=server.auth)
    assert document.status_code == 200
    return routes | set(document.json()["paths"])


def refuse_every_vllm_path(server: VllmServer) -> tuple[set[str], int]:
    """Ask every path of `server` (`vllm_paths`, ``/`` and an unknown one) with GET, POST
    and OPTIONS, without a key and with a wrong one: each must be the guard's 401. Then a
    whole chat through ``/invocations`` with the key (and refused without). Returns the
    paths and how many requests were refused."""
    paths = vllm_paths(server) | {"/", "/no-such-path"}
    named = {"/invocations", "/tokenize", "/detokenize", "/metrics", "/pooling", "/classify"}
    assert named | {"/score", "/rerank", "/v1/chat/completions", "/health", "/docs"} <= paths
    refused = 0
    with httpx.Client(base_url=server.root_url, timeout=30) as client:
        for path in sorted(paths):
            url = path.replace("{", "").replace("}", "")  # /v1/responses/{response_id}
            for method in ("GET", "POST", "OPTIONS"):
                for headers in ({}, {"Authorization": "Bearer not-the-key"}):
                    answer = client.request(method, url, headers=headers, json={})
                    assert answer.status_code == 401, (method, path, answer.text[:200])
                    assert answer.json()["error"]["code"] == "invalid_api_key"
                    refused += 1
        # The key opens them: a whole chat through /invocations.
        chat = {"model": server.model, "messages": QUESTION, "max_tokens": 4}
        opened = client.post("/invocations", json=chat, headers=server.auth)
        assert opened.status_code == 200, opened.text
        assert opened.json()["choices"][0]["message"]["content"]
        assert client.post("/invocations", json=chat).status_code == 401
    return paths, refused
