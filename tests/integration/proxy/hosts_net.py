"""GPU hosts on one machine, each in its own network namespace: real managers (process
runtime) with the stand-in model server (tests/fixtures/fakevllm), reached by a real
`python -m proxy` in the machine's own namespace over a veth pair per host.

`network(count)` creates the namespaces and links and removes them (and every process in
them) at the end; `Host.start()` runs its manager inside its namespace, `Host.kill()` kills
everything in it at once (a host that lost power), `Host.capture()` listens for UDP
port 9 inside it (where a magic packet arrives). Needs root and `ip netns`: `netns_problem()`
says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import FAKE_COMMAND, FAKE_ENV, text_spec
from tests.integration.proxy.proxy_live import API_KEY, TEMPLATE, _stop, _wait_ours, free_ports

ROOT = Path(__file__).resolve().parents[3]
MANAGER_PORT = 8090
MODEL_PORT = 9100
"""Every host's model servers use the same ports: each host is its own namespace."""
STREAM_DELAY = "0.05"

CAPTURE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9))
print("listening", flush=True)
data, addr = s.recvfrom(2048)
sys.stdout.write(data.hex() + "\\n")
sys.stdout.flush()
"""


def netns_problem() -> str | None:
    """Why this machine cannot make network namespaces for a test (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    name = f"hlprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _ip(*args: str, ns: str | None = None) -> str:
    cmd = ["ip", *args] if ns is None else ["ip", "netns", "exec", ns, "ip", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Host:
    name: str
    ns: str
    address: str
    broadcast: str
    mac: str
    work: Path
    token: str
    models: dict[str, Any]
    """models.json of this host."""
    env: dict[str, str] = field(default_factory=dict)
    manager: subprocess.Popen | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.address}:{MANAGER_PORT}"

    def start(self) -> None:
        """Run the manager in the namespace and wait for its model list."""
        self.starts += 1
        models_file = self.work / f"models-{self.name}.json"
        models_file.write_text(json.dumps(self.models))
        env = {
            **self.env,
            "HOMELAB_MANAGER_TOKEN": self.token,
            "HOMELAB_MODELS_FILE": str(models_file),
            "HOMELAB_RUNTIME": "process",
            "HOMELAB_MANAGER_HOST": self.address,
            "HOMELAB_MANAGER_PORT": str(MANAGER_PORT),
            "HOMELAB_MODEL_HOST": self.address,
            "HOMELAB_MODEL_BIND_HOST": self.address,
            "HOMELAB_LOG_DIR": str(self.work / f"logs-{self.name}"),
            "HOMELAB_GPU_RELEASE_TIMEOUT": "0",
            "HOMELAB_QUEUE_TIMEOUT": "120",
            "HOMELAB_STOP_TIMEOUT": "5",
            "HOMELAB_LOG_LEVEL": "warning",
        }
        log = self.work / f"manager-{self.name}.log"
        with log.open("a") as out:
            self.manager = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-m", "manager"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=out,
            )

        def ours() -> bool:
            r = httpx.get(
                self.url + "/v1/models",
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=2,
            )
            names = {name for name in self.models if not name.startswith("$")}
            return r.status_code == 200 and {m["id"] for m in r.json()["data"]} == names

        _wait_ours(self.manager, log, ours)

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill(self) -> None:
        """SIGKILL every process in the namespace (the manager and its model servers): the
        host lost power."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.manager is not None:
            self.manager.wait(10)
            self.manager = None
        end = time.monotonic() + 10
        while self.pids() and time.monotonic() < end:
            time.sleep(0.05)

    def ensure(self, model: str) -> None:
        """Make `model` resident on this host (the manager's own API, not the proxy)."""
        r = httpx.post(
            f"{self.url}/v1/models/{model}/ensure",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=60,
        )
        r.raise_for_status()

    @contextlib.contextmanager
    def capture(self) -> Iterator[Path]:
        """Listen on UDP port 9 inside the namespace; yields the file the first datagram's
        hex is written to (after a ``listening`` line)."""
        out_path = self.work / f"capture-{self.name}.txt"
        out = out_path.open("w")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", CAPTURE],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            end = time.monotonic() + 20
            while "listening" not in out_path.read_text() and time.monotonic() < end:
                time.sleep(0.05)
            yield out_path
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            out.close()


@contextlib.contextmanager
def network(work: Path, models: list[dict[str, Any]]) -> Iterator[list[Host]]:
    """One namespace per entry of `models` (that host's models.json), linked to this
    namespace by a veth pair (10.<n>.<i>.1 here, .2 there); all removed at the end."""
    tag = os.getpid() % 100000
    net = 100 + os.getpid() % 100
    token = secrets.token_urlsafe(32)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    hosts: list[Host] = []
    made: list[tuple[str, str]] = []
    try:
        for i, host_models in enumerate(models, 1):
            ns, here, there = f"hl{tag}-{i}", f"hl{tag}r{i}", f"hl{tag}n{i}"
            _ip("netns", "add", ns)
            made.append((ns, here))
            _ip("link", "add", here, "type", "veth", "peer", "name", there)
            _ip("link", "set", there, "netns", ns)
            _ip("addr", "add", f"10.{net}.{i}.1/24", "dev", here)
            _ip("link", "set", here, "up")
            _ip("addr", "add", f"10.{net}.{i}.2/24", "dev", there, ns=ns)
            _ip("link", "set", there, "up", ns=ns)
            _ip("link", "set", "lo", "up", ns=ns)
            mac = json.loads(_ip("-j", "link", "show", there, ns=ns))[0]["address"]
            hosts.append(
                Host(
                    name=f"h{i}",
                    ns=ns,
                    address=f"10.{net}.{i}.2",
                    broadcast=f"10.{net}.{i}.255",
                    mac=mac,
                    work=work,
                    token=token,
                    models=host_models,
                    env=base_env,
                )
            )
        yield hosts
    finally:
        for host in hosts:
            host.kill()
        for ns, here in made:
            subprocess.run(["ip", "link", "del", here], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def chat_model(
    suffix: str, port: int = MODEL_PORT, *, env: dict[str, str] | None = None, **fields: object
) -> dict:
    """A text model served by the stand-in on `port` (streams paced); `env` and `fields`
    on top (models.json's ``warm``, ``gpu_memory_mib``, ...)."""
    spec = text_spec(
        suffix,
        port,
        command=FAKE_COMMAND,
        env={**FAKE_ENV, "FAKEVLLM_STREAM_DELAY": STREAM_DELAY, **(env or {})},
        **fields,
    )
    return spec.model_dump(mode="json")


@dataclass
class Proxy:
    url: str
    proc: subprocess.Popen
    log: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=120,
            **kwargs,  # type: ignore[arg-type]
        )

    def hosts_up(self) -> dict[str, bool]:
        """Each host's state as /readyz says (every host away: /readyz is a 503)."""
        r = httpx.get(self.url + "/readyz", headers={"Authorization": f"Bearer {API_KEY}"})
        if r.status_code == 503:
            return {name: False for name in ("h1", "h2", "h3")}
        if r.status_code != 200:
            return {}
        return {name: h["up"] for name, h in r.json().get("hosts", {}).items()}

    def wait_hosts(self, want: dict[str, bool], timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            seen = {}
            with contextlib.suppress(httpx.HTTPError):
                seen = self.hosts_up()
            if all(seen.get(k) is v for k, v in want.items()):
                return
            time.sleep(0.1)
        raise AssertionError(f"hosts not {want}: {seen}\n{self.log.read_text()[-3000:]}")

    def stop(self, *, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
            self.proc.wait(10)
        else:
            _stop(self.proc)


def catalogue(work: Path, hosts: list[Host], sleepable: set[str] = frozenset()) -> Path:  # type: ignore[assignment]
    """The proxy's catalogue: the first host is HOMELAB_MANAGER_URL's, the others by url and
    token file; `sleepable` hosts with their namespace's MAC and broadcast address."""
    entries: dict[str, dict] = {}
    for i, host in enumerate(hosts):
        entry: dict[str, object] = {}
        if i:
            token_file = work / f"{host.name}.token"
            token_file.write_text(host.token + "\n")
            token_file.chmod(0o600)
            entry = {"url": host.url, "token_file": token_file.name}
        if host.name in sleepable:
            entry |= {"mac": host.mac, "broadcast": host.broadcast, "sleepable": True}
        entries[host.name] = entry
    path = work / "catalogue.json"
    path.write_text(json.dumps({"hosts": entries}))
    return path


def start_proxy(
    work: Path, hosts: list[Host], name: str, extra: dict[str, str] | None = None
) -> Proxy:
    """A real `python -m proxy` in this namespace on a free loopback port."""
    (work / "app" / "templates").mkdir(parents=True, exist_ok=True)
    (work / "app" / "templates" / "index.html").write_text(TEMPLATE)
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    log = work / f"proxy-{name}.log"
    env = {
        **hosts[0].env,
        "HOMELAB_MANAGER_URL": hosts[0].url,
        "HOMELAB_MANAGER_TOKEN": hosts[0].token,
        "HOMELAB_PROXY_HOST": "127.0.0.1",
        "HOMELAB_PROXY_PORT": str(port),
        "HOMELAB_API_KEYS": API_KEY,
        "HOMELAB_IMAGE_DIR": str(work / "images"),
        "HOMELAB_APP_DIR": str(work / "app"),
        "HOMELAB_STATE_DIR": str(work / f"state-{name}"),
        "HOMELAB_JOBS_URL": str(work / f"jobs-{name}.db"),
        "HOMELAB_PUBLIC_URL": url,
        "HOMELAB_MODELS_CACHE_TTL": "0.2",
        **(extra or {}),
    }
    with log.open("a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy"], cwd=ROOT, env=env, stdout=out, stderr=out
        )

    def ours() -> bool:
        r = httpx.get(url + "/readyz", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=2)
        return r.status_code == 200 and r.json()["manager"] == hosts[0].url

    _wait_ours(proc, log, ours)
    return Proxy(url, proc, log)
