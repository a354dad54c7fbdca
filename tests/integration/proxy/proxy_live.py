"""A live stack (`run_live_stack`) for the proxy's integration tier, all real programs on loopback:

    openai SDK ──▶ `python -m proxy` ──▶ `python -m manager` (process runtime)
                                              └─▶ tests.fixtures.fakevllm host processes

The manager reads a models.json written here: two text models, one image model
(fakevllm in image mode, sizes 64x64 / 32x48, max_n 2), one image model whose
load fails and one embedding model. Ports come from 18400-18499. Teardown stops the proxy and the
manager, then every model server left in the process runtime's registry (the
manager leaves servers running on exit, so the next manager can adopt them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from manager.process_runtime import ProcessRuntime
from manager.settings import ManagerSettings
from tests import tools
from tests.integration.conftest import (
    FAKE_COMMAND,
    FAKE_ENV,
    embedding_spec,
    image_spec,
    text_spec,
)

ROOT = Path(__file__).resolve().parents[3]
PORTS = range(18400, 18500)
API_KEY = "it-" + secrets.token_urlsafe(24)
MAX_UPLOAD = 64 * 1024
TEMPLATE = "<!doctype html><title>t</title><script>const CONFIG = {{ config|tojson }};</script>"


def free_ports(count: int) -> list[int]:
    """`count` ports of 18400-18499 free right now (`tests.tools.free_ports`)."""
    return tools.free_ports(PORTS, count)


@dataclass
class LiveStack:
    proxy_url: str
    manager_url: str
    manager_token: str
    api_key: str
    text: str
    other_text: str
    image: str
    broken_image: str
    embedding: str
    log_dir: Path
    internal: tuple[str, ...] = ()
    """The addresses (host:port) of the manager and the model servers: no answer to a
    keyless client may name one."""

    def client(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=self.proxy_url, headers=headers, timeout=60, **kwargs)


class PortTaken(Exception):
    """Our server exited at start (its port was taken meanwhile): try other ports."""


def _wait_ours(proc: subprocess.Popen, log: Path, is_ours, deadline_s: float = 60.0) -> None:
    """Wait until `is_ours()` (a check that only OUR server passes) is true.

    Another program may answer on the same port (the machine is shared), so a plain
    health check is not enough. Raises PortTaken if the process exits meanwhile.
    """
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise PortTaken(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if is_ours():
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server did not come up in time:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _stop_model_servers(settings: ManagerSettings) -> None:
    async def stop_all() -> None:
        runtime = ProcessRuntime(settings)
        for instance in await runtime.list_owned():
            await runtime.stop(instance.model, None, timeout=5)

    asyncio.run(stop_all())


NAMES = {
    "text": "it-chat",
    "other_text": "it-other",
    "image": "it-image",
    "broken_image": "it-broken",
    "embedding": "it-embed",
}


def _models_json(ports: list[int]) -> str:
    p1, p2, p3, p4, p5 = ports
    specs = {
        NAMES["text"]: text_spec("it-chat", p1, command=FAKE_COMMAND, env=FAKE_ENV),
        NAMES["other_text"]: text_spec("it-other", p2, command=FAKE_COMMAND, env=FAKE_ENV),
        NAMES["image"]: image_spec("it-image", p3, command=FAKE_COMMAND, env=FAKE_ENV),
        NAMES["broken_image"]: image_spec(
            "it-broken", p4, command=FAKE_COMMAND, env={**FAKE_ENV, "FAKEVLLM_FAIL_LOAD": "1"}
        ),
        NAMES["embedding"]: embedding_spec("it-embed", p5, command=FAKE_COMMAND, env=FAKE_ENV),
    }
    return json.dumps({n: s.model_dump(mode="json") for n, s in specs.items()}, indent=2)


def live_manager_env(
    base_env: dict[str, str], token: str, models_file: Path, port: int, log_dir: Path
) -> dict[str, str]:
    """The environment of a live stack's manager (process runtime, on loopback)."""
    return {
        **base_env,
        "HOMELAB_MANAGER_TOKEN": token,
        "HOMELAB_MODELS_FILE": str(models_file),
        "HOMELAB_RUNTIME": "process",
        "HOMELAB_MANAGER_HOST": "127.0.0.1",
        "HOMELAB_MANAGER_PORT": str(port),
        "HOMELAB_LOG_DIR": str(log_dir),
        "HOMELAB_GPU_RELEASE_TIMEOUT": "0",
        "HOMELAB_QUEUE_TIMEOUT": "60",
        "HOMELAB_STOP_TIMEOUT": "5",
        "HOMELAB_LOG_LEVEL": "warning",
    }


@contextlib.contextmanager
def _process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("a") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            _stop(proc)


@contextlib.contextmanager
def run_open_proxy(
    stack: LiveStack,
    work: Path,
    extra_env: dict[str, str | None] | None = None,
    api_key: str | None = None,
) -> Iterator[str]:
    """A second proxy on the same manager with HOMELAB_API_KEYS=off (the open mode), or
    `api_key` its one key, and `extra_env` settings (None: the setting left unset);
    yields its URL."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    (work / "app" / "templates").mkdir(parents=True, exist_ok=True)
    (work / "app" / "templates" / "index.html").write_text(TEMPLATE)
    for attempt in range(3):
        (port,) = free_ports(1)
        url = f"http://127.0.0.1:{port}"
        env = {
            **base_env,
            "HOMELAB_MANAGER_URL": stack.manager_url,
            "HOMELAB_MANAGER_TOKEN": stack.manager_token,
            "HOMELAB_PROXY_HOST": "127.0.0.1",
            "HOMELAB_PROXY_PORT": str(port),
            "HOMELAB_API_KEYS": api_key or "off",
            "HOMELAB_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
            "HOMELAB_IMAGE_DIR": str(work / "open-images"),
            "HOMELAB_APP_DIR": str(work / "app"),
            "HOMELAB_PUBLIC_URL": url,
        }
        for name, value in (extra_env or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value

        def is_ours(url: str = url) -> bool:
            r = httpx.get(url + "/readyz", timeout=2)
            # The model list is ours (the manager's address is told to a key, not to all).
            keyed = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            models = httpx.get(url + "/v1/models", headers=keyed, timeout=2).json()["data"]
            return r.status_code == 200 and {m["id"] for m in models} == set(NAMES.values())

        try:
            with _process([sys.executable, "-m", "proxy"], env, work / "open-proxy.log") as proc:
                _wait_ours(proc, work / "open-proxy.log", is_ours)
                yield url
                return
        except PortTaken:
            if attempt == 2:
                raise


@contextlib.contextmanager
def run_live_stack(work: Path) -> Iterator[LiveStack]:
    """Start manager and proxy (on fresh random ports, up to 3 tries), yield, stop all."""
    (work / "app" / "templates").mkdir(parents=True)
    (work / "app" / "templates" / "index.html").write_text(TEMPLATE)
    token = secrets.token_urlsafe(32)
    log_dir = work / "logs"
    settings = ManagerSettings(manager_token=token, log_dir=log_dir, model_host="127.0.0.1")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    try:
        for attempt in range(3):
            manager_port, proxy_port, *model_ports = free_ports(7)
            manager_url = f"http://127.0.0.1:{manager_port}"
            proxy_url = f"http://127.0.0.1:{proxy_port}"
            models_file = work / f"models-{attempt}.json"
            models_file.write_text(_models_json(model_ports))
            manager_env = live_manager_env(base_env, token, models_file, manager_port, log_dir)
            proxy_env = {
                **base_env,
                "HOMELAB_MANAGER_URL": manager_url,
                "HOMELAB_MANAGER_TOKEN": token,
                "HOMELAB_PROXY_HOST": "127.0.0.1",
                "HOMELAB_PROXY_PORT": str(proxy_port),
                "HOMELAB_API_KEYS": API_KEY,
                "HOMELAB_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
                "HOMELAB_IMAGE_DIR": str(work / "images"),
                "HOMELAB_JOBS_URL": str(work / f"jobs-{attempt}.db"),
                "HOMELAB_APP_DIR": str(work / "app"),
                "HOMELAB_PUBLIC_URL": proxy_url,
            }

            def manager_is_ours(manager_url: str = manager_url) -> bool:
                r = httpx.get(
                    manager_url + "/v1/models",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=2,
                )
                return r.status_code == 200 and {m["id"] for m in r.json()["data"]} == set(
                    NAMES.values()
                )

            def proxy_is_ours(proxy_url: str = proxy_url, manager_url: str = manager_url) -> bool:
                r = httpx.get(
                    proxy_url + "/readyz",
                    headers={"Authorization": f"Bearer {API_KEY}"},
                    timeout=2,
                )
                return r.status_code == 200 and r.json()["manager"] == manager_url

            try:
                with (
                    _process(
                        [sys.executable, "-m", "manager"], manager_env, work / "manager.log"
                    ) as manager,
                ):
                    _wait_ours(manager, work / "manager.log", manager_is_ours)
                    with _process(
                        [sys.executable, "-m", "proxy"], proxy_env, work / "proxy.log"
                    ) as proxy:
                        _wait_ours(proxy, work / "proxy.log", proxy_is_ours)
                        yield LiveStack(
                            proxy_url=proxy_url,
                            manager_url=manager_url,
                            manager_token=token,
                            api_key=API_KEY,
                            log_dir=log_dir,
                            internal=tuple(
                                f"127.0.0.1:{port}" for port in (manager_port, *model_ports)
                            ),
                            **NAMES,
                        )
                        return
            except PortTaken:
                if attempt == 2:
                    raise
    finally:
        _stop_model_servers(settings)
