"""The REAL vLLM (its CPU build) in a container the manager's Docker runtime made, on
the real Docker engine: behind its standby gate until the key releases it, then every
path it has is refused without the upstream key (issue 23).

No vLLM image can be pulled here, so the image is the offline Debian test image
(``homelab-ai/testbase:bookworm``, scripts/build-test-images.sh) with this machine's
libnuma (vLLM's CPU kernels link it) and vLLM's server module as its entrypoint (as in vLLM's own image), built by the test, and this machine's
vLLM venv and model seen through the runtime's one bind mount, the HF cache
(``HOMELAB_HF_CACHE`` = ``$HOMELAB_STATE_DIR``, read by Python from the venv's
site-packages: the container's ``python3`` is the same 3.11). Everything else is the
manager's: the gate as PID 1 (it writes the guard module and puts it first on
``PYTHONPATH``), vLLM's argv with ``--middleware homelab_model_guard.ModelGuard``, the key
in ``VLLM_API_KEY``, the port published on 127.0.0.1.

Markers ``docker`` and ``vllm``; skips without the engine, the test image, the venv or the
model. vLLM loads in about 35 s on an idle machine (a deadline only, never asserted).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.docker_runtime import HF_CACHE_TARGET, DockerRuntime
from manager.health import HttpReadinessProbe
from manager.settings import ManagerSettings
from tests.e2e.conftest import (
    ARTIFACTS,
    CPU_ARGS,
    OFFLINE,
    VllmRuntime,
    VllmServer,
    refuse_every_vllm_path,
    state_dir,
)
from tests.integration.conftest import (  # noqa: F401 - fixtures used by name
    BASE_IMAGE,
    docker_client,
    docker_env,
    free_port,
    model_name,
    text_spec,
    token,
)

pytestmark = [pytest.mark.docker, pytest.mark.vllm]


IMAGE = "homelab-ai/vllm-hostvenv:test"
DOCKERFILE = f"""FROM {BASE_IMAGE}
COPY libnuma.so.1 /usr/lib/x86_64-linux-gnu/libnuma.so.1
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
"""
LIBNUMA = Path("/usr/lib/x86_64-linux-gnu/libnuma.so.1")
"""vLLM's CPU kernels (vllm._C) link it; the minimal test image has no libnuma1."""


def build_image(client: Any, work: Path) -> None:
    """`IMAGE`: the test image, this machine's libnuma and vLLM's entrypoint."""
    if not LIBNUMA.exists():
        pytest.skip(
            f"no {LIBNUMA} on this machine to copy into the image (apt-get install libnuma1)"
        )
    work.mkdir()
    (work / "Dockerfile").write_text(DOCKERFILE)
    shutil.copyfile(LIBNUMA, work / "libnuma.so.1")  # the file, not the link
    client.images.build(path=str(work), tag=IMAGE, rm=True)


def _in_container(path: Path, root: Path) -> str:
    """`path` (under `root`, the HF cache on the host) as the container sees it."""
    return f"{HF_CACHE_TARGET}/{path.relative_to(root)}"


@pytest.fixture
async def probe() -> AsyncIterator[HttpReadinessProbe]:
    async with HttpReadinessProbe(first_delay=1.0, max_interval=2.0) as p:
        yield p


async def test_real_vllm_in_docker_is_released_by_its_key_and_refuses_every_path_without_it(
    vllm_runtime: VllmRuntime,
    docker_env: Any,  # noqa: F811 - the fixture
    probe: HttpReadinessProbe,
    tmp_path: Path,
) -> None:
    root = state_dir().resolve()
    venv = vllm_runtime.python.parent.parent
    site = next(venv.glob("lib/python3*/site-packages"))
    if not vllm_runtime.model_dir.resolve().is_relative_to(root) or not site.is_relative_to(root):
        pytest.skip(f"the vLLM venv and the model must be under {root} (HOMELAB_STATE_DIR)")
    build_image(docker_env, tmp_path / "image")
    runtime = DockerRuntime(
        ManagerSettings(manager_token=token(), hf_cache=str(root), model_host="127.0.0.1")
    )
    port = free_port()
    name = model_name("real-vllm")
    spec = text_spec(
        "real-vllm",
        port,
        image=IMAGE,
        model=_in_container(vllm_runtime.model_dir.resolve(), root),
        args=CPU_ARGS,
        start_timeout=900,
        env={
            **OFFLINE,
            "PYTHONPATH": _in_container(site, root),
            "PYTHONDONTWRITEBYTECODE": "1",  # nothing written into the venv
            "HF_HOME": "/tmp/hf",  # nor into the state folder
        },
    )
    await runtime.prepare(name, spec)  # the standby container: the gate, no server
    try:
        await runtime.start(name, spec)  # the key releases the gate
        await probe.wait_ready(name, spec, runtime)
        instance = await runtime.inspect(name, spec)
        assert instance is not None and instance.api_key
        served = VllmRuntime(vllm_runtime.python, vllm_runtime.model_dir, served_name=name)
        server = VllmServer(
            runtime=served,
            host="127.0.0.1",
            port=port,
            log_path=ARTIFACTS / f"vllm-docker-{port}.log",
            api_key=instance.api_key,
        )
        paths, refused = refuse_every_vllm_path(server)
        assert refused == len(paths) * 6
        print(f"vLLM in Docker: {len(paths)} paths, {refused} requests refused without the key")
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"vllm-docker-{port}.log").write_text(await runtime.logs(name, spec, tail=400))
        await runtime.stop(name, spec, timeout=10)
