"""Live stacks for the jobs tier: the real manager (process runtime) with fakevllm model
servers, one or more real `python -m proxy` processes that can be stopped, killed and
started again on the same job store, and (for the multi-proxy case) a real
`redis-server` on a free loopback port, without persistence, in a temp directory.

Models: two text models (`jb-a`, `jb-b`; streams paced by FAKEVLLM_STREAM_DELAY so a
chat job runs for a while; jb-b also delays whole answers), one image model (`jb-img`, FAKEVLLM_RESPONSE_DELAY)
and one embedding model (`jb-emb`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

from manager.settings import ManagerSettings
from tests.integration.conftest import (
    FAKE_COMMAND,
    FAKE_ENV,
    embedding_spec,
    image_spec,
    text_spec,
)
from tests.integration.proxy.proxy_live import (
    API_KEY,
    PortTaken,
    _stop,
    _stop_model_servers,
    _wait_ours,
    free_ports,
)
from tests.tools import find_program

ROOT = Path(__file__).resolve().parents[3]
TEXT_A, TEXT_B, IMAGE, EMBED = "jb-a", "jb-b", "jb-img", "jb-emb"
STREAM_DELAY = "0.05"
IMAGE_DELAY = "0.3"
TEXT_B_DELAY = "0.4"
"""jb-b answers non-streamed requests (batch lines, completions) after this many seconds."""


def _models_json(ports: list[int], image_delay: str, fields: dict[str, dict] | None = None) -> str:
    pa, pb, pi, pe = ports
    slow = {**FAKE_ENV, "FAKEVLLM_STREAM_DELAY": STREAM_DELAY}
    specs = {
        TEXT_A: text_spec("jb-a", pa, command=FAKE_COMMAND, env=slow),
        TEXT_B: text_spec(
            "jb-b", pb, command=FAKE_COMMAND, env={**slow, "FAKEVLLM_RESPONSE_DELAY": TEXT_B_DELAY}
        ),
        IMAGE: image_spec(
            "jb-img",
            pi,
            command=FAKE_COMMAND,
            env={**FAKE_ENV, "FAKEVLLM_RESPONSE_DELAY": image_delay},
        ),
        EMBED: embedding_spec("jb-emb", pe, command=FAKE_COMMAND, env=FAKE_ENV),
    }
    out = {n: s.model_dump(mode="json") | (fields or {}).get(n, {}) for n, s in specs.items()}
    return json.dumps(out, indent=2)


@dataclass
class ProxyProc:
    url: str
    proc: subprocess.Popen
    log: Path


@dataclass
class JobsStack:
    work: Path
    manager_url: str
    token: str
    api_key: str = API_KEY
    proxies: dict[str, ProxyProc] = field(default_factory=dict)
    base_env: dict[str, str] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def client(self, name: str = "p1", **kwargs) -> httpx.Client:
        return httpx.Client(
            base_url=self.proxies[name].url, headers=self.headers(), timeout=60, **kwargs
        )

    def start_proxy(
        self,
        name: str,
        jobs_url: str,
        extra: dict[str, str] | None = None,
        *,
        is_ours: Callable[[str], bool] | None = None,
    ) -> str:
        """Start (or restart) proxy `name` on a fresh port with the given job store.
        `is_ours(url)`: how to tell it is up and ours (default: `readyz` with the stack's key
        names this stack's manager; an open proxy tells no key holder that)."""
        for attempt in range(3):
            (port,) = free_ports(1)
            url = f"http://127.0.0.1:{port}"
            log = self.work / f"proxy-{name}.log"
            env = {
                **self.base_env,
                "HOMELAB_MANAGER_URL": self.manager_url,
                "HOMELAB_MANAGER_TOKEN": self.token,
                "HOMELAB_PROXY_HOST": "127.0.0.1",
                "HOMELAB_PROXY_PORT": str(port),
                "HOMELAB_API_KEYS": self.api_key,
                "HOMELAB_IMAGE_DIR": str(self.work / "images"),
                "HOMELAB_APP_DIR": str(self.work / "app"),
                "HOMELAB_JOBS_URL": jobs_url,
                "HOMELAB_PUBLIC_URL": url,  # image URLs on this address, as setup.sh server sets it
                "HOMELAB_MODELS_CACHE_TTL": "0.2",
                **(extra or {}),
            }
            out = log.open("a")
            proc = subprocess.Popen(
                [sys.executable, "-m", "proxy"], cwd=ROOT, env=env, stdout=out, stderr=out
            )
            out.close()

            def ours(url: str = url) -> bool:
                # Only key holders are told the manager's address (issue 13).
                r = httpx.get(url + "/readyz", headers=self.headers(), timeout=2)
                return r.status_code == 200 and r.json()["manager"] == self.manager_url

            try:
                check = ours if is_ours is None else functools.partial(is_ours, url)
                _wait_ours(proc, log, check)
            except PortTaken:
                if attempt == 2:
                    raise
                continue
            self.proxies[name] = ProxyProc(url, proc, log)
            return url
        raise RuntimeError("unreachable")

    def stop_proxy(self, name: str, *, kill: bool = False) -> None:
        proxy = self.proxies.pop(name)
        if kill:
            proxy.proc.send_signal(signal.SIGKILL)
            proxy.proc.wait(10)
        else:
            _stop(proxy.proc)


def wait_batch(sdk: openai.OpenAI, batch_id: str, timeout: float = 120) -> Any:
    """The batch once it has ended (completed, failed, cancelled or expired)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {batch.status}")


@contextlib.contextmanager
def run_jobs_stack(
    work: Path, *, image_delay: str = IMAGE_DELAY, fields: dict[str, dict] | None = None
) -> Iterator[JobsStack]:
    """Start the manager; yield a stack to start proxies on; stop everything at the end.
    `fields`: models.json fields to set per model (e.g. ``{"jb-a": {"max_in_flight": 1}}``)."""
    import secrets

    (work / "app" / "templates").mkdir(parents=True, exist_ok=True)
    (work / "app" / "templates" / "index.html").write_text("<!doctype html><title>t</title>")
    token = secrets.token_urlsafe(32)
    log_dir = work / "logs"
    settings = ManagerSettings(manager_token=token, log_dir=log_dir, model_host="127.0.0.1")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    stack: JobsStack | None = None
    manager: subprocess.Popen | None = None
    try:
        for attempt in range(3):
            manager_port, *model_ports = free_ports(5)
            models_file = work / f"models-{attempt}.json"
            models_file.write_text(_models_json(model_ports, image_delay, fields))
            env = {
                **base_env,
                "HOMELAB_MANAGER_TOKEN": token,
                "HOMELAB_MODELS_FILE": str(models_file),
                "HOMELAB_RUNTIME": "process",
                "HOMELAB_MANAGER_HOST": "127.0.0.1",
                "HOMELAB_MANAGER_PORT": str(manager_port),
                "HOMELAB_LOG_DIR": str(log_dir),
                "HOMELAB_GPU_RELEASE_TIMEOUT": "0",
                "HOMELAB_QUEUE_TIMEOUT": "120",
                "HOMELAB_STOP_TIMEOUT": "5",
                "HOMELAB_LOG_LEVEL": "warning",
            }
            url = f"http://127.0.0.1:{manager_port}"
            log = work / "manager.log"
            with log.open("a") as out:
                manager = subprocess.Popen(
                    [sys.executable, "-m", "manager"], cwd=ROOT, env=env, stdout=out, stderr=out
                )

            def ours(url: str = url) -> bool:
                r = httpx.get(
                    url + "/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=2
                )
                return r.status_code == 200 and {m["id"] for m in r.json()["data"]} == {
                    TEXT_A,
                    TEXT_B,
                    IMAGE,
                    EMBED,
                }

            try:
                _wait_ours(manager, log, ours)
            except PortTaken:
                if attempt == 2:
                    raise
                continue
            stack = JobsStack(work=work, manager_url=url, token=token, base_env=base_env)
            break
        assert stack is not None
        yield stack
    finally:
        if stack is not None:
            for name in list(stack.proxies):
                stack.stop_proxy(name)
        if manager is not None:
            _stop(manager)
        _stop_model_servers(settings)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def run_redis(work: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port, no persistence; yields its URL."""
    exe = find_program("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: run ./setup.sh deps")
    data = work / "redis"
    data.mkdir(exist_ok=True)
    for _ in range(3):
        port = _free_port()
        log = work / "redis.log"
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(data),
                "--protected-mode",
                "yes",
            ],
            stdout=log.open("a"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        up = False
        while time.monotonic() < deadline and proc.poll() is None:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    up = True
                    break
            time.sleep(0.05)
        if not up:
            _stop(proc)
            continue
        try:
            yield f"redis://127.0.0.1:{port}/0"
            return
        finally:
            _stop(proc)
    raise RuntimeError(f"redis-server did not start:\n{(work / 'redis.log').read_text()[-2000:]}")
