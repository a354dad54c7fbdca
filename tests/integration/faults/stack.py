"""A fault stack: the real manager (process runtime) and the real proxy as child processes,
stand-in model servers (tests.fixtures.fakevllm host processes) that take time to load and
stream slowly, and the means to SIGKILL any of them.

    openai SDK ──▶ `python -m proxy` ──▶ `python -m manager` (process runtime, own session)
                                              └─▶ fakevllm host processes (own sessions)

Models (models.json written here): `ft-text` and `ft-other` (text; load 0.5 s, 0.1 s between
streamed words, 0.3 s per non-streamed answer) and `ft-image` (image mode, one generation at
a time with 8 waiting at most, like the image server). Every model server carries
`FAULTSTACK_ID=<this stack>` in its environment, so the stack finds every server it caused,
registered by the manager or not (`servers()`), and kills exactly those at the end.

Ports come from 18700-18799. `FaultStack.close()` stops the proxy and the manager, then every
model server process with this stack's id (SIGKILL to its process group): bounded, and it
never touches a process it did not cause.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests import tools
from tests.integration.conftest import FAKE_COMMAND, FAKE_ENV, image_spec, text_spec
from wire.procs import is_alive

ROOT = Path(__file__).resolve().parents[3]
PORTS = range(18700, 18800)
TEXT, OTHER, IMAGE = "ft-text", "ft-other", "ft-image"
TEMPLATE = "<!doctype html><title>t</title><script>const CONFIG = {{ config|tojson }};</script>"
LOAD_SECONDS = 0.5
STREAM_DELAY = 0.1
RESPONSE_DELAY = 0.3
IMAGE_QUEUE_LIMIT = 8


def free_ports(count: int) -> list[int]:
    """`count` ports of 18700-18799 free right now (`tests.tools.free_ports`)."""
    return tools.free_ports(PORTS, count)


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


@dataclass(frozen=True)
class Server:
    """One live model server process this stack caused."""

    pid: int
    model: str


@dataclass
class FaultStack:
    work: Path
    stack_id: str = field(default_factory=lambda: "fs" + secrets.token_hex(6))
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    api_key: str = field(default_factory=lambda: "ft-" + secrets.token_urlsafe(24))
    manager_env_extra: dict[str, str] = field(default_factory=dict)
    proxy_env_extra: dict[str, str] = field(default_factory=dict)
    manager: subprocess.Popen | None = None
    proxy: subprocess.Popen | None = None
    manager_starts: int = 0
    manager_start_s: float = 0.0
    """How long the last `start_manager` took until the manager answered (a loaded machine
    takes seconds to import it): scenarios size their long streams by it."""

    def __post_init__(self) -> None:
        self.manager_port, self.proxy_port, *self.model_ports = free_ports(5)
        self.log_dir = self.work / "model-logs"
        self.models_file = self.work / "models.json"
        self.models_file.write_text(json.dumps(self._models(), indent=2))
        (self.work / "app" / "templates").mkdir(parents=True, exist_ok=True)
        (self.work / "app" / "templates" / "index.html").write_text(TEMPLATE)

    # ---- configuration --------------------------------------------------------------------
    def _models(self) -> dict:
        env = {
            **FAKE_ENV,
            "FAULTSTACK_ID": self.stack_id,
            "FAKEVLLM_LOAD_SECONDS": str(LOAD_SECONDS),
            "FAKEVLLM_STREAM_DELAY": str(STREAM_DELAY),
            "FAKEVLLM_RESPONSE_DELAY": str(RESPONSE_DELAY),
        }
        p1, p2, p3 = self.model_ports
        specs = {
            TEXT: text_spec("ft-text", p1, command=FAKE_COMMAND, env=env),
            OTHER: text_spec("ft-other", p2, command=FAKE_COMMAND, env=env),
            IMAGE: image_spec(
                "ft-image",
                p3,
                command=FAKE_COMMAND,
                env={**env, "FAKEVLLM_RESPONSE_DELAY": "0.05", "FAKEVLLM_QUEUE_LIMIT": "8"},
            ),
        }
        return {n: s.model_dump(mode="json") for n, s in specs.items()}

    @property
    def manager_url(self) -> str:
        return f"http://127.0.0.1:{self.manager_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def _base_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}

    def _manager_env(self) -> dict[str, str]:
        return {
            **self._base_env(),
            "HOMELAB_MANAGER_TOKEN": self.token,
            "HOMELAB_MODELS_FILE": str(self.models_file),
            "HOMELAB_RUNTIME": "process",
            "HOMELAB_MANAGER_HOST": "127.0.0.1",
            "HOMELAB_MANAGER_PORT": str(self.manager_port),
            "HOMELAB_LOG_DIR": str(self.log_dir),
            "HOMELAB_GPU_RELEASE_TIMEOUT": "0",
            "HOMELAB_QUEUE_TIMEOUT": "60",
            "HOMELAB_STOP_TIMEOUT": "5",
            "HOMELAB_LOG_LEVEL": "info",
            **self.manager_env_extra,
        }

    def _proxy_env(self) -> dict[str, str]:
        return {
            **self._base_env(),
            "HOMELAB_MANAGER_URL": self.manager_url,
            "HOMELAB_MANAGER_TOKEN": self.token,
            "HOMELAB_PROXY_HOST": "127.0.0.1",
            "HOMELAB_PROXY_PORT": str(self.proxy_port),
            "HOMELAB_API_KEYS": self.api_key,
            "HOMELAB_IMAGE_DIR": str(self.work / "images"),
            "HOMELAB_APP_DIR": str(self.work / "app"),
            "HOMELAB_STATE_DIR": str(self.work / "state"),  # its job store, not the user's
            **self.proxy_env_extra,
        }

    # ---- processes ------------------------------------------------------------------------
    def _spawn(self, module: str, env: dict[str, str], log: str) -> subprocess.Popen:
        with (self.work / log).open("a") as out:
            return subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_manager(self, wait: bool = True) -> None:
        """Start `python -m manager` (again) on the same port, models and log folder."""
        assert self.manager is None or self.manager.poll() is not None, "manager still running"
        self.manager_starts += 1
        started = time.monotonic()
        self.manager = self._spawn("manager", self._manager_env(), "manager.log")
        if wait:
            self.wait_manager()
            self.manager_start_s = time.monotonic() - started

    def wait_manager(self, deadline_s: float = 30.0) -> None:
        """Wait until the manager answers its model list. Raises RuntimeError if it exits."""
        assert self.manager is not None
        end = time.monotonic() + deadline_s
        headers = {"Authorization": f"Bearer {self.token}"}
        while time.monotonic() < end:
            if self.manager.poll() is not None:
                raise RuntimeError(f"manager exited: {self.tail('manager.log')}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(self.manager_url + "/v1/models", headers=headers, timeout=2)
                if r.status_code == 200 and {m["id"] for m in r.json()["data"]} == {
                    TEXT,
                    OTHER,
                    IMAGE,
                }:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"manager did not come up: {self.tail('manager.log')}")

    def kill_manager(self) -> None:
        """SIGKILL the manager process (not its model servers: they lead their own sessions)."""
        assert self.manager is not None
        self.manager.send_signal(signal.SIGKILL)
        self.manager.wait(10)

    def start_proxy(self) -> None:
        self.proxy = self._spawn("proxy", self._proxy_env(), "proxy.log")
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proxy.poll() is not None:
                raise RuntimeError(f"proxy exited: {self.tail('proxy.log')}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(
                    self.proxy_url + "/readyz",
                    headers={"Authorization": f"Bearer {self.api_key}"},  # key holders see it
                    timeout=2,
                )
                if r.status_code == 200 and r.json().get("manager") == self.manager_url:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"proxy did not come up: {self.tail('proxy.log')}")

    def tail(self, log: str, lines: int = 40) -> str:
        try:
            text = (self.work / log).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ---- what is running --------------------------------------------------------------------
    def servers(self) -> list[Server]:
        """Every live model server process this stack caused (by its FAULTSTACK_ID), as
        process group leaders (the manager starts each in its own session)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            env = _environ(pid)
            if env.get("FAULTSTACK_ID") != self.stack_id or not is_alive(pid):
                continue
            with contextlib.suppress(OSError):
                if os.getpgid(pid) != pid:
                    continue  # a child of a server (none today), not a server
            port = self._port_of(pid)
            model = {p: n for n, p in zip((TEXT, OTHER, IMAGE), self.model_ports, strict=True)}
            found.append(Server(pid, model.get(port, "?")))
        return found

    def _port_of(self, pid: int) -> int | None:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        for i, arg in enumerate(args[:-1]):
            if arg == b"--port":
                return int(args[i + 1])
        env = _environ(pid)
        return int(env["HOMELAB_IMAGE_PORT"]) if "HOMELAB_IMAGE_PORT" in env else None

    def registry(self) -> dict:
        path = self.log_dir / "registry.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def orphans(self) -> list[Server]:
        """Live servers the manager's registry does not name (with that pid)."""
        known = {entry.get("pid") for entry in self.registry().values()}
        return [s for s in self.servers() if s.pid not in known]

    def kill_server(self, model: str) -> int:
        """SIGKILL the process group of `model`'s live server; its pid."""
        server = next(s for s in self.servers() if s.model == model)
        os.killpg(server.pid, signal.SIGKILL)
        return server.pid

    def close(self) -> None:
        for proc in (self.proxy, self.manager):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for server in self.servers():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.pid, signal.SIGKILL)


@contextlib.contextmanager
def fault_stack(work: Path, **kwargs) -> Iterator[FaultStack]:
    """A started manager and proxy; everything they and their model servers left is ended."""
    stack = FaultStack(work, **kwargs)
    try:
        stack.start_manager()
        stack.start_proxy()
        yield stack
    finally:
        stack.close()
