"""Start and stop what a benchmark measures: stand-in upstreams, the manager, the proxy.

Every process is a child started in its own session (process group), with its
output in a log file under a temporary directory. `Stack.close()` ends exactly
the groups it started (SIGTERM, then SIGKILL after a grace period), then any
stand-in upstream the manager launched and left behind (found by its pidfile),
then any Docker container the benchmark's models.json names. Use it as a context
manager so a failing benchmark cleans up too.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import httpraw
from bench.common import REPO
from tests.tools import free_ports as _free_ports

UPSTREAM = Path(__file__).resolve().parent / "upstream.py"
HOST = "127.0.0.1"
PORTS = range(18600, 18700)


def free_ports(count: int) -> list[int]:
    """`count` different ports of 18600-18699 free right now, picked at random
    (`tests.tools.free_ports`): two runs on one machine rarely reach for the same, and
    each start checks that the server answering is its own."""
    return _free_ports(PORTS, count)


class StackError(Exception):
    """A component did not start or answer as expected. The message has its last log lines."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    """Processes of one benchmark. Ports come from the caller (`free_ports`); each start
    waits until the port answers as the process it started (its own model id, manager
    token, API key), not merely answers."""

    label: str
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="homelab-bench-")))
    procs: list[Proc] = field(default_factory=list)
    manager_token: str = field(default_factory=lambda: "bench-" + secrets.token_urlsafe(24))
    api_key: str = field(default_factory=lambda: "sk-bench-" + secrets.token_urlsafe(16))
    manager_port: int | None = None
    proxy_port: int | None = None
    containers: list[str] = field(default_factory=list)
    models: dict = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    """HOMELAB_* settings given to both the manager and the proxy (``--env`` of the scripts)."""

    # -- processes --------------------------------------------------------------

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        fh = log.open("wb")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        popen = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(REPO),
            env=full_env,
            start_new_session=True,
        )
        fh.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def upstream_command(self, name: str, extra: list[str] | None = None) -> list[str]:
        """The command line of a stand-in upstream, without host/port/name (appended by the caller
        or by the manager's process runtime)."""
        return [sys.executable, str(UPSTREAM), "--pidfile", str(self.pidfile(name)), *(extra or [])]

    def pidfile(self, name: str) -> Path:
        return self.workdir / f"upstream-{name}.pid"

    def upstream_pid(self, name: str) -> int | None:
        try:
            return int(self.pidfile(name).read_text().strip())
        except (OSError, ValueError):
            return None

    def start_upstream(self, name: str, port: int, extra: list[str] | None = None) -> Proc:
        root = f"bench/{name}-{secrets.token_hex(6)}"  # what only our upstream reports
        cmd = [
            *self.upstream_command(name, extra),
            "--model",
            root,
            "--served-model-name",
            name,
            "--host",
            HOST,
            "--port",
            str(port),
        ]
        proc = self.spawn(f"upstream-{name}", cmd)

        def ours(resp: httpraw.Response) -> bool:
            return [(m["id"], m["root"]) for m in json.loads(resp.body)["data"]] == [(name, root)]

        wait_http(HOST, port, "/v1/models", proc, ours=ours)
        return proc

    def write_models(self, models: dict) -> Path:
        self.models = models
        path = self.workdir / "models.json"
        path.write_text(json.dumps(models, indent=2), encoding="utf-8")
        self.containers = [m["container"] for m in models.values() if isinstance(m, dict)]
        return path

    def start_manager(
        self,
        port: int,
        runtime: str,
        models_file: Path,
        env: dict[str, str] | None = None,
        module: str = "manager",
    ) -> Proc:
        """Start `python -m <module>` (the manager, or an experiment that wraps it) on `port`."""
        self.manager_port = port
        base = {
            "HOMELAB_MODELS_FILE": str(models_file),
            "HOMELAB_MANAGER_TOKEN": self.manager_token,
            "HOMELAB_MANAGER_HOST": HOST,
            "HOMELAB_MANAGER_PORT": str(port),
            "HOMELAB_RUNTIME": runtime,
            "HOMELAB_MODEL_HOST": HOST,
            "HOMELAB_GPU_RELEASE_TIMEOUT": "0",
            "HOMELAB_LOG_DIR": str(self.workdir / "model-logs"),
        }
        base.update(self.extra_env)
        base.update(env or {})
        proc = self.spawn("manager", [sys.executable, "-m", module], base)
        # Our token opens only our manager (another one answers 401).
        wait_http(HOST, port, "/v1/models", proc, headers=self.manager_headers())
        return proc

    def start_proxy(
        self,
        port: int,
        env: dict[str, str] | None = None,
        module: str = "proxy",
        wrapper: Sequence[str] = (),
        timeout: float = 60.0,
    ) -> Proc:
        """Start `python -m <module>` (the proxy, or an experiment that wraps it) on `port`;
        `wrapper` goes before that command line (a profiler, say: `bench.instructions` runs
        the proxy under valgrind), `timeout` bounds the wait for its first answer."""
        if self.manager_port is None:
            raise StackError("start the manager before the proxy")
        self.proxy_port = port
        base = {
            "HOMELAB_MANAGER_URL": f"http://{HOST}:{self.manager_port}",
            "HOMELAB_MANAGER_TOKEN": self.manager_token,
            "HOMELAB_API_KEYS": self.api_key,
            "HOMELAB_PROXY_HOST": HOST,
            "HOMELAB_PROXY_PORT": str(port),
            "HOMELAB_JOBS_URL": str(self.workdir / f"jobs-{port}.db"),
        }
        base.update(self.extra_env)
        base.update(env or {})
        proc = self.spawn("proxy", [*wrapper, sys.executable, "-m", module], base)
        manager_url = f"http://{HOST}:{self.manager_port}"

        def ours(resp: httpraw.Response) -> bool:  # our key, and it reads our manager
            return json.loads(resp.body).get("manager") == manager_url

        wait_http(
            HOST, port, "/readyz", proc, timeout=timeout, headers=self.client_headers(), ours=ours
        )
        return proc

    def client_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def manager_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.manager_token}"}

    def ensure(self, model: str, timeout: float = 300.0) -> dict:
        """Make `model` resident through the manager's API; blocks until ready."""
        assert self.manager_port is not None
        resp = asyncio.run(
            httpraw.request_once(
                HOST,
                self.manager_port,
                "POST",
                f"/v1/models/{model}/ensure",
                b"{}",
                self.manager_headers(),
                timeout,
            )
        )
        if resp.status != 200:
            raise StackError(
                f"ensure {model}: {resp.status} {resp.body[:500]!r}\n{self.find('manager').tail() if self.find('manager') else ''}"
            )
        return json.loads(resp.body)

    def find(self, name: str) -> Proc | None:
        return next((p for p in self.procs if p.name == name), None)

    # -- clean-up ---------------------------------------------------------------

    def close(self) -> None:
        for proc in reversed(self.procs):
            _end_group(proc.popen)
        for pidfile in self.workdir.glob("upstream-*.pid"):
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            if _is_our_upstream(pid):
                _end_pid(pid)
        if self.containers and _docker_available():
            _remove_containers(self.containers)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _end_group(popen: subprocess.Popen, grace: float = 10.0) -> None:
    if popen.poll() is not None:
        return
    try:
        os.killpg(popen.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        popen.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        popen.wait(5)


def _is_our_upstream(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return str(UPSTREAM).encode() in fh.read()
    except OSError:
        return False


def _end_pid(pid: int, grace: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _docker_available() -> bool:
    try:
        import docker  # noqa: F401
    except ImportError:
        return False
    return os.path.exists("/var/run/docker.sock")


def _remove_containers(names: list[str]) -> None:
    import docker

    try:
        client = docker.from_env()
    except docker.errors.DockerException:
        return
    try:
        for name in names:
            try:
                client.containers.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                print(f"bench: could not remove container {name}: {exc}", file=sys.stderr)
    finally:
        client.close()


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_http(
    host: str,
    port: int,
    path: str,
    proc: Proc | None = None,
    timeout: float = 60.0,
    headers: dict[str, str] | None = None,
    ours: Callable[[httpraw.Response], bool] | None = None,
) -> None:
    """Block until GET path answers 2xx (and `ours(answer)`, when given: the answer is the
    started process's, not another program's on the same port). Raises StackError (with
    the log tail) on timeout or exit."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise StackError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if port_open(host, port):
            try:
                resp = asyncio.run(
                    httpraw.request_once(host, port, "GET", path, None, headers, 5.0)
                )
                if 200 <= resp.status < 300 and (ours is None or ours(resp)):
                    return
                last = f"{resp.status} {resp.body[:200]!r}"
            except (OSError, httpraw.HttpError, TimeoutError, ValueError, KeyError) as exc:
                last = repr(exc)
        time.sleep(0.1)
    tail = proc.tail() if proc else ""
    raise StackError(
        f"{host}:{port}{path} did not answer 2xx within {timeout:.0f}s (last: {last})\n{tail}"
    )


def proxy_available() -> bool:
    """Whether the proxy and the manager can be run from this checkout."""
    return (REPO / "proxy" / "__main__.py").exists() and (REPO / "manager" / "__main__.py").exists()


def text_model(name: str, port: int, command: list[str] | None, **extra: object) -> dict:
    """A models.json text entry for the bench. `command` set: the process runtime runs it."""
    entry: dict = {
        "type": "text",
        "container": f"bench-{name}",
        "port": port,
        "image": "homelab-ai/fakevllm:test",
        "model": f"bench/{name}",
        "gpu": False,
        "start_timeout": 120,
        "description": "homelab-ai benchmark stand-in",
    }
    if command is not None:
        entry["command"] = command
    entry.update(extra)
    return entry


@dataclass
class OneModel:
    """One text model made resident, its direct and proxied addresses, and its processes."""

    direct: tuple[str, int]
    proxied: tuple[str, int] | None
    headers: dict[str, str]
    upstream_pid: int
    proxy_pid: int | None = None
    manager_pid: int | None = None

    def groups(self) -> dict[str, list[int]]:
        """Process groups for CPU accounting: each program with its workers, not the upstream."""
        out = {"upstream": [self.upstream_pid]}
        if self.proxy_pid is not None:
            out["proxy"] = tree(self.proxy_pid)
        if self.manager_pid is not None:
            out["manager"] = tree(self.manager_pid, exclude={self.upstream_pid})
        return out


def tree(pid: int, exclude: set[int] | None = None) -> list[int]:
    from bench import procstat

    return procstat.tree(pid, exclude)


def one_model(
    st: Stack,
    ports: Sequence[int],
    model: str,
    upstream_args: list[str],
    direct_only: bool,
    proxy_module: str = "proxy",
    manager_module: str = "manager",
    proxy_wrapper: Sequence[str] = (),
    proxy_timeout: float = 60.0,
) -> OneModel:
    """Direct only: a stand-in upstream on `ports[0]`. Otherwise the manager (process runtime,
    on `ports[1]`) launches that upstream from models.json and makes it resident, and the
    proxy listens on `ports[2]`. Raises StackError / SystemExit when a part is missing or
    fails."""
    upstream_port, manager_port, proxy_port = ports
    if direct_only:
        up = st.start_upstream(model, upstream_port, upstream_args)
        return OneModel(direct=(HOST, upstream_port), proxied=None, headers={}, upstream_pid=up.pid)
    if not proxy_available():
        raise SystemExit(
            "proxy/ or manager/ has no __main__.py in this checkout yet: use --direct-only"
        )
    models = {model: text_model(model, upstream_port, st.upstream_command(model, upstream_args))}
    mgr = st.start_manager(manager_port, "process", st.write_models(models), module=manager_module)
    st.ensure(model)
    prx = st.start_proxy(
        proxy_port, module=proxy_module, wrapper=proxy_wrapper, timeout=proxy_timeout
    )
    upstream_pid = st.upstream_pid(model)
    if upstream_pid is None:
        raise StackError("the manager started the upstream but its pidfile is missing")
    return OneModel(
        direct=(HOST, upstream_port),
        proxied=(HOST, proxy_port),
        headers=st.client_headers(),
        upstream_pid=upstream_pid,
        proxy_pid=prx.pid,
        manager_pid=mgr.pid,
    )


def add_env_option(parser) -> None:
    """``--env KEY=VALUE`` (repeatable): a HOMELAB_* setting for the manager and the proxy."""
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="HOMELAB_KEY=VALUE",
        help="a setting for the manager and the proxy, e.g. HOMELAB_LOG_LEVEL=warning (repeatable)",
    )


def parse_env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("HOMELAB_") or not key.replace("_", "").isalnum():
            raise SystemExit(f"--env wants HOMELAB_KEY=VALUE, got {pair!r}")
        out[key] = value
    return out
