"""dockerfiles/imageserver.Dockerfile, built and run on the real Docker engine.

No registry is reachable here, so BASE is pointed at homelab-ai/torchbase:test,
built from the offline testbase plus the host's CPU torch wheel
(torchbase.Dockerfile). The image server image is built from the real
Dockerfile with that BASE, run with the tiny pipeline bind-mounted, and asked
for an image over its published port. What this does not check: the default
CUDA base image (it cannot be pulled here) and the GPU. Markers `docker` and
`diffusers`; the container is named with the session prefix and always removed.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from manager.runtime import LABEL_MANAGED, LABEL_MODEL
from tests.integration.conftest import SESSION

from .conftest import ROOT, free_port, require_diffusers

pytestmark = [pytest.mark.docker, pytest.mark.diffusers]

TORCHBASE = "homelab-ai/torchbase:test"
IMAGE = "homelab-ai/imageserver:test"
HERE = Path(__file__).resolve().parent
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def _docker_build(args: list[str]) -> None:
    result = subprocess.run(
        ["docker", "build", *args],
        capture_output=True,
        text=True,
        check=False,
        env={
            "DOCKER_BUILDKIT": "0",
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        },
    )
    if result.returncode != 0:
        pytest.fail(
            f"docker build {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )


@pytest.fixture(scope="module")
def imageserver_image(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Build the CPU torch base, then the image server image on it (Docker caches both)."""
    require_diffusers()
    import torch

    if not HOST_CA.exists():
        pytest.skip(f"{HOST_CA} is missing: the build containers could not trust PyPI")
    context = tmp_path_factory.mktemp("torchbase")
    wheels = context / "wheels"
    version = torch.__version__
    # The wheel the suite runs on, from pip's configured sources or the index setup.sh
    # installed torch from (HOMELAB_TORCH_INDEX_URL).
    index = os.environ.get("HOMELAB_TORCH_INDEX_URL")
    download = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            f"torch=={version}",
            "-d",
            str(wheels),
            *(["--index-url", index] if index else []),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if download.returncode != 0 or not list(wheels.glob("torch-*.whl")):
        pytest.fail(
            f"cannot get the torch {version} wheel for the test base image:\n{download.stderr[-3000:]}"
        )
    shutil.copyfile(HOST_CA, context / "host-ca.crt")
    shutil.copyfile(HERE / "torchbase.Dockerfile", context / "Dockerfile")
    _docker_build(["-t", TORCHBASE, str(context)])
    # The context setup.sh sends: imageserver/, wire/ and the Dockerfile, nothing else.
    build = tmp_path_factory.mktemp("imageserver-context")
    for folder in ("imageserver", "wire"):
        shutil.copytree(ROOT / folder, build / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (build / "dockerfiles").mkdir()
    shutil.copyfile(
        ROOT / "dockerfiles" / "imageserver.Dockerfile",
        build / "dockerfiles" / "imageserver.Dockerfile",
    )
    _docker_build(
        [
            "-f",
            str(build / "dockerfiles" / "imageserver.Dockerfile"),
            "--build-arg",
            f"BASE={TORCHBASE}",
            "-t",
            IMAGE,
            str(build),
        ]
    )
    return IMAGE


@pytest.mark.timeout(1800)
def test_the_image_builds_and_serves_the_tiny_pipeline(
    imageserver_image: str, docker_env: Any, tiny_pipeline: Path
) -> None:
    port = free_port()
    name = f"{SESSION}-imageserver"
    container = docker_env.containers.run(
        imageserver_image,
        detach=True,
        name=name,
        labels={LABEL_MANAGED: "true", LABEL_MODEL: name},
        environment={
            "HOMELAB_IMAGE_MODEL": "/models/tiny",
            "HOMELAB_IMAGE_SERVED_NAME": name,
            "HOMELAB_IMAGE_DEVICE": "cpu",
            "HOMELAB_IMAGE_DTYPE": "fp32",
            "HOMELAB_IMAGE_SIZES": "64x64",
            "HOMELAB_IMAGE_STEPS": "2",
            "HF_HUB_OFFLINE": "1",
        },
        ports={"8000/tcp": ("127.0.0.1", port)},
        volumes={str(tiny_pipeline): {"bind": "/models/tiny", "mode": "ro"}},
    )
    try:
        body = _wait_ready(container, f"http://127.0.0.1:{port}")
        loaded = body.pop("loaded")  # how it was loaded (wire.image_options.ImageLoaded)
        assert body == {"status": "ready", "error": None, "model": name}
        assert loaded["device"] == "cpu" and loaded["offload"] == "none", loaded
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/images/generations",
            json={"model": name, "prompt": "in a container", "n": 1},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        image = Image.open(io.BytesIO(base64.b64decode(reply.json()["data"][0]["b64_json"])))
        assert (image.format, image.size) == ("PNG", (64, 64))
        container.reload()
        assert container.attrs["Config"]["Cmd"] == ["python", "-m", "imageserver"]
        assert "HF_HOME=/root/.cache/huggingface" in container.attrs["Config"]["Env"]
    finally:
        container.remove(force=True)


def _wait_ready(container: Any, base_url: str, limit: float = 300.0) -> dict:
    deadline = time.monotonic() + limit
    last: object = "no answer"
    while time.monotonic() < deadline:
        container.reload()
        if container.status == "exited":
            pytest.fail(
                f"the container exited:\n{container.logs(tail=60).decode(errors='replace')}"
            )
        try:
            body = httpx.get(f"{base_url}/health", timeout=5).json()
        except (httpx.TransportError, ValueError) as exc:
            last = exc
        else:
            last = body
            if body.get("status") in ("ready", "failed"):
                return body
        time.sleep(0.25)
    pytest.fail(f"not ready: {last}\n{container.logs(tail=60).decode(errors='replace')}")
