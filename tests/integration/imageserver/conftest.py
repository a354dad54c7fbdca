"""Fixtures for the image server's diffusers tier: the tiny pipeline, ports, real server processes.

The tiny pipeline (imageserver.tiny) is built once per session into a temp
folder (`tiny_sd`, tests/conftest.py). Tests skip, with the reason, when torch or
diffusers is missing (CI sets HOMELAB_REQUIRE_TIERS, which turns such a skip into a
failure).
Ports come from 18300-18399. `ImageServerProcess` runs `python -m imageserver`
as a real subprocess on 127.0.0.1 and always kills it (and its process group)
when the test is done.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import tools

ROOT = Path(__file__).resolve().parents[3]
PORTS = range(18300, 18400)


def require_diffusers() -> None:
    pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    pytest.importorskip(
        "diffusers", reason="diffusers is not installed (pip install -e '.[image]')"
    )
    pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install -e '.[image]')"
    )


def free_port() -> int:
    """A port in 18300-18399 nothing listens on right now, at random (`tests.tools`)."""
    return tools.free_ports(PORTS, 1)[0]


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_sd: Path) -> Path:
    """The tiny text-to-image pipeline folder (StableDiffusionPipeline): the session's
    `tiny_sd` (tests/conftest.py), which tests/e2e's real-model stacks serve too."""
    return tiny_sd


@pytest.fixture(scope="session")
def tiny_edit_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights saved as StableDiffusionImg2ImgPipeline: an edit-only model."""
    require_diffusers()
    from imageserver.tiny import build

    return build(tmp_path_factory.mktemp("tiny-img2img"), kind="image2image")


@pytest.fixture
def broken_pipeline(tiny_pipeline: Path, tmp_path: Path) -> Path:
    """A folder whose model_index.json names a UNet that is not there."""
    folder = tmp_path / "broken"
    folder.mkdir()
    for part in ("model_index.json",):
        (folder / part).write_bytes((tiny_pipeline / part).read_bytes())
    for sub in ("scheduler", "tokenizer", "text_encoder", "vae"):
        (folder / sub).mkdir()
        for file in (tiny_pipeline / sub).iterdir():
            (folder / sub / file.name).write_bytes(file.read_bytes())
    return folder


def server_env(model: Path | str, port: int, **extra: str) -> dict[str, str]:
    """The environment the manager would give the server, for the tiny pipeline on the CPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    env.update(
        {
            "HOMELAB_IMAGE_MODEL": str(model),
            "HOMELAB_IMAGE_SERVED_NAME": "tiny-sd",
            "HOMELAB_IMAGE_HOST": "127.0.0.1",
            "HOMELAB_IMAGE_PORT": str(port),
            "HOMELAB_IMAGE_DTYPE": "fp32",
            "HOMELAB_IMAGE_DEVICE": "cpu",
            "HOMELAB_IMAGE_SIZES": "64x64,128x64",
            "HOMELAB_IMAGE_MAX_N": "3",
            "HOMELAB_IMAGE_STEPS": "2",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"HOMELAB_IMAGE_{k.upper()}": v for k, v in extra.items()})
    return env


class ImageServerProcess:
    """`python -m imageserver` as a real subprocess; records every /health status it sees."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = int(env["HOMELAB_IMAGE_PORT"])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.statuses: list[str] = []
        self.first_body: dict = {}
        """The first /health body seen."""
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imageserver"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, *final: str, limit: float = 300.0) -> dict:
        """Poll /health until its status is one of `final`; record each status seen.

        Fails the test (with the server's log) if the process exits or `limit` passes.
        """
        deadline = time.monotonic() + limit
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"image server exited with {self.proc.returncode}:\n{self.logs()}")
                try:
                    body = client.get(f"{self.base_url}/health").json()
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                if not self.statuses:
                    self.first_body = body
                self.statuses.append(body["status"])
                if body["status"] in final:
                    return body
                time.sleep(0.05)
        pytest.fail(f"/health never reached {final}; seen {self.statuses[-3:]}:\n{self.logs()}")

    def terminate(self, grace: float = 30.0) -> int:
        """SIGTERM the process group, SIGKILL after `grace` s. Returns the exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """Start image server processes; every one is stopped after the test."""
    started: list[ImageServerProcess] = []

    def start(model: Path | str, **extra: str) -> ImageServerProcess:
        port = free_port()
        server = ImageServerProcess(
            server_env(model, port, **extra), tmp_path / f"server-{port}.log"
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.terminate(grace=10)
