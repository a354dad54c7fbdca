"""Integration-tier fixtures: the real Docker engine, the fake vLLM image, model specs, cleanup.

Docker tests (marker `docker`) get the `docker_client` fixture, which skips them
when no engine answers or the offline base image is missing (build it with
`scripts/build-test-images.sh`), and rebuilds `homelab-ai/fakevllm:test` once per
session so the image always matches tests/fixtures/fakevllm (Docker's cache makes
that instant when nothing changed).

Every model, container and process name a test makes starts with `SESSION`
(unique per pytest process), so parallel runs by other engineers never collide,
and cleanup removes exactly what this run made: after each test, and again at
the end of the session, every container whose name or `homelab-ai.model` label
starts with `SESSION` is force-removed. Model servers' ports come from 18100-18199,
picked free at random for each test (`free_ports`); readiness then proves the server
answering is the test's own (its session-unique served name behind its per-start key).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from manager.runtime import LABEL_MANAGED, LABEL_MODEL
from manager.spec import EmbeddingModel, ImageModel, TextModel
from tests import tools

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-test-images.sh"
BASE_IMAGE = "homelab-ai/testbase:bookworm"
FAKE_IMAGE = "homelab-ai/fakevllm:test"
SESSION = f"hlit{os.getpid()}"
"""Prefix of every name this test run creates."""

FAKE_COMMAND = [sys.executable, "-m", "tests.fixtures.fakevllm"]
"""spec.command that runs the fake server as a host process (process runtime); give the
spec `FAKE_ENV` too so the module is found whatever the manager's working directory."""
FAKE_ENV = {"PYTHONPATH": str(ROOT)}


PORTS = range(18100, 18200)


def free_ports(count: int) -> list[int]:
    """`count` different ports of 18100-18199 free right now, at random
    (`tests.tools.free_ports`)."""
    return tools.free_ports(PORTS, count)


def free_port() -> int:
    """One port of 18100-18199 free right now, at random."""
    return free_ports(1)[0]


def token() -> str:
    return secrets.token_urlsafe(32)


async def upstream_auth(runtime: Any, name: str, spec: Any) -> dict[str, str]:
    """The Authorization header a model server the runtime launched wants (its upstream key)."""
    instance = await runtime.inspect(name, spec)
    assert instance is not None and instance.api_key, "the runtime reported no upstream key"
    return {"Authorization": f"Bearer {instance.api_key}"}


GUARDED_PATHS = ("/v1/models", "/health", "/version", "/_fake/stats", "/invocations", "/")
"""Paths of fakevllm's text server, its open ones and test controls among them, that the
guard vLLM is launched with (manager/model_guard.py) must refuse without the key."""


async def assert_every_path_wants_the_key(base_url: str, auth: dict[str, str]) -> None:
    """The server at `base_url` loaded the guard (as vLLM's --middleware): without the
    key, or with another, every path of `GUARDED_PATHS` is refused in the guard's
    envelope; with `auth` an open one answers."""
    async with httpx.AsyncClient(base_url=base_url, trust_env=False) as client:
        for path in GUARDED_PATHS:
            for method, headers in (("GET", {}), ("POST", {"Authorization": "Bearer x"})):
                refused = await client.request(method, path, headers=headers)
                assert refused.status_code == 401, (method, path, refused.text)
                assert refused.json()["error"]["code"] == "invalid_api_key"
        assert (await client.get("/version", headers=auth)).status_code == 200


def text_spec(
    suffix: str, port: int, *, env: dict[str, str] | None = None, **fields: Any
) -> TextModel:
    """A text model for the fake image (or, with command=FAKE_COMMAND, a host process)."""
    values: dict[str, Any] = {
        "type": "text",
        "container": f"{SESSION}-{suffix}",
        "port": port,
        "image": FAKE_IMAGE,
        "model": f"fake/{suffix}",
        "gpu": False,
        "start_timeout": 30,
        "env": dict(env or {}),
    }
    values.update(fields)
    return TextModel(**values)


def embedding_spec(
    suffix: str, port: int, *, env: dict[str, str] | None = None, **fields: Any
) -> EmbeddingModel:
    """An embedding model, set up as `text_spec` sets up a text model: fakevllm in text
    mode answers /v1/embeddings (and ignores the manager's --runner pooling)."""
    text = text_spec(suffix, port, env=env, **fields)
    return EmbeddingModel(**text.model_dump(exclude_unset=True) | {"type": "embedding"})


def image_spec(
    suffix: str, port: int, *, env: dict[str, str] | None = None, **fields: Any
) -> ImageModel:
    values: dict[str, Any] = {
        "type": "image",
        "container": f"{SESSION}-{suffix}",
        "port": port,
        "image": FAKE_IMAGE,
        "model": f"fake/{suffix}",
        "gpu": False,
        "device": "cpu",
        "sizes": ["64x64", "32x48"],
        "max_n": 2,
        "steps": 2,
        "start_timeout": 30,
        "env": {"FAKEVLLM_KIND": "image", **(env or {})},
    }
    values.update(fields)
    return ImageModel(**values)


def model_name(suffix: str) -> str:
    return f"{SESSION}-{suffix}"


def remove_session_containers(client: Any) -> list[str]:
    """Force-remove every container this session made (by label or by name). Returns their names."""
    import docker.errors

    removed = []
    for container in client.containers.list(all=True, ignore_removed=True):
        labels = container.labels or {}
        ours = container.name.startswith(SESSION) or (
            labels.get(LABEL_MANAGED) == "true" and labels.get(LABEL_MODEL, "").startswith(SESSION)
        )
        if ours:
            try:
                container.remove(force=True)
                removed.append(container.name)
            except docker.errors.NotFound:
                pass
    return removed


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A docker SDK client for the real engine, with the test images built. Skips without them."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no SDK, no socket, engine down: all mean "no Docker here"
        pytest.skip(f"no Docker engine reachable: {exc}")
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"image {BASE_IMAGE} is missing: run scripts/build-test-images.sh")
    result = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"scripts/build-test-images.sh failed:\n{result.stdout}\n{result.stderr}")
    try:
        yield client
    finally:
        remove_session_containers(client)
        client.close()


@pytest.fixture
def docker_env(docker_client: Any) -> Iterator[Any]:
    """The docker client, and after the test every container it made is removed."""
    try:
        yield docker_client
    finally:
        remove_session_containers(docker_client)


@pytest.fixture
def hf_cache(tmp_path: Path) -> str:
    """A host folder bind-mounted as the HF cache (nothing to clean up in Docker)."""
    path = tmp_path / "hf-cache"
    path.mkdir()
    return str(path)
