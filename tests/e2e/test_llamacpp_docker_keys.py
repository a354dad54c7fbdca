"""The REAL llama.cpp ``llama-server`` in a container the manager's Docker runtime made, on
the real Docker engine: released by its key through the standby gate, then every path it
has refused without the upstream key (issue 23), as on the process runtime
(tests/e2e/test_llamacpp_keys.py; the check is tests/e2e/llamacpp.py's).

No llama.cpp image can be pulled here, so the image is the offline Debian test image
(``homelab-ai/testbase:bookworm``, scripts/build-test-images.sh) with the OpenMP runtime
this machine's llama-server links, and that llama-server as its entrypoint, seen (with
the GGUF) through the runtime's one bind mount, the HF cache (``HOMELAB_HF_CACHE`` =
``$HOMELAB_STATE_DIR``, where ``./setup.sh deps`` builds it). Everything else is the
manager's: the gate as PID 1, llama-server's argv (``--no-webui``), the key in
``LLAMA_API_KEY``, the port published on 127.0.0.1.

Markers ``docker`` and ``llamacpp``; skips without the engine, the test image,
llama-server or the GGUF, or when they are not under the state folder.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.docker_runtime import HF_CACHE_TARGET, DockerRuntime
from manager.health import HttpReadinessProbe
from manager.settings import ManagerSettings
from tests.e2e.conftest import ARTIFACTS, state_dir
from tests.e2e.llamacpp import gguf_path, llama_server_path, refuse_every_llama_path
from tests.integration.conftest import (  # noqa: F401 - fixtures used by name
    BASE_IMAGE,
    docker_client,
    docker_env,
    free_port,
    model_name,
    text_spec,
    token,
)

pytestmark = [pytest.mark.docker, pytest.mark.llamacpp]

IMAGE = "homelab-ai/llama-hostbin:test"


def _in_container(path: Path, root: Path) -> str:
    return f"{HF_CACHE_TARGET}/{path.relative_to(root)}"


def _host_libraries(binary: Path) -> list[Path]:
    """What `binary` links from this machine's system folders that the minimal test image
    lacks (the OpenMP runtime): the files `ldd` resolves, beside them nothing else."""
    listed = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True)
    found = []
    for line in listed.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and parts[0].startswith("libgomp"):
            found.append(Path(parts[2]))
    return found


def build_image(client: Any, work: Path, entrypoint: str, binary: Path) -> None:
    work.mkdir()
    copies = []
    for lib in _host_libraries(binary):
        shutil.copyfile(lib, work / lib.name)  # the file, not the link
        copies.append(f"COPY {lib.name} /usr/lib/x86_64-linux-gnu/{lib.name}")
    (work / "Dockerfile").write_text(
        "\n".join([f"FROM {BASE_IMAGE}", *copies, f'ENTRYPOINT ["{entrypoint}"]', ""])
    )
    client.images.build(path=str(work), tag=IMAGE, rm=True)


@pytest.fixture
async def probe() -> AsyncIterator[HttpReadinessProbe]:
    async with HttpReadinessProbe(first_delay=0.5, max_interval=1.0) as p:
        yield p


async def test_real_llama_server_in_docker_refuses_every_path_without_its_key(
    docker_env: Any,  # noqa: F811 - the imported fixture, requested by name
    probe: HttpReadinessProbe,
    tmp_path: Path,
) -> None:
    binary, gguf = llama_server_path(), gguf_path()
    if not binary.is_file():
        pytest.skip("no llama-server (HOMELAB_LLAMA_SERVER); run ./setup.sh deps")
    if not gguf.is_file():
        pytest.skip(f"no GGUF at {gguf} (HOMELAB_GGUF_FILE); run ./setup.sh deps")
    root = state_dir().resolve()
    binary, gguf = binary.resolve(), gguf.resolve()
    if not binary.is_relative_to(root) or not gguf.is_relative_to(root):
        pytest.skip(f"llama-server and the GGUF must be under {root} (HOMELAB_STATE_DIR)")
    build_image(docker_env, tmp_path / "image", _in_container(binary, root), binary)
    runtime = DockerRuntime(
        ManagerSettings(manager_token=token(), hf_cache=str(root), model_host="127.0.0.1")
    )
    port = free_port()
    name = model_name("real-llama")
    spec = text_spec(
        "real-llama",
        port,
        backend="llama.cpp",
        image=IMAGE,
        model=_in_container(gguf, root),
        context_size=1024,
        start_timeout=300,
    )
    await runtime.prepare(name, spec)  # the standby container: the gate, no server
    try:
        await runtime.start(name, spec)  # the key releases the gate
        await probe.wait_ready(name, spec, runtime)
        instance = await runtime.inspect(name, spec)
        assert instance is not None and instance.api_key
        paths, refused = refuse_every_llama_path(
            f"http://127.0.0.1:{port}", instance.api_key, binary, served=name
        )
        assert refused > len(paths)  # (the exact count is asserted inside)
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        logs = await runtime.logs(name, spec, tail=400)
        (ARTIFACTS / f"llama-docker-{port}.log").write_text(logs)
        await runtime.stop(name, spec, timeout=10)
