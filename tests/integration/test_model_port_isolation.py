"""Model ports are not reachable from another host on the LAN; the proxy's port is (issue 13).

"Another host on the LAN" is a network namespace this test creates, joined to this
machine by a veth pair on a private /30 it picks (10.213.N.0/30, checked unused);
both are removed at the end. Only loopback and the addresses of that pair are ever
targeted. In it, `curl` tries:

- the real proxy (`python -m proxy`, bound to 0.0.0.0 like on the server): answers;
- a model server the real DockerRuntime published with `HOMELAB_MODEL_BIND_HOST` set
  to the proxy-facing address (127.0.0.1 here, where the proxy runs on this machine):
  not reachable at this machine's LAN address. Before issue 13 the runtime published
  every model port on every address.
- and on loopback the same port answers only with the server's upstream key.

Needs root (network namespaces) and iproute2's `ip` (./setup.sh deps installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from manager.docker_runtime import DockerRuntime
from manager.settings import ManagerSettings
from tests.integration.conftest import ROOT, SESSION, text_spec, token
from tests.tools import find_program

pytestmark = pytest.mark.docker

PORTS = range(18150, 18199)


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_program("ip") or "ip", *args], capture_output=True, text=True, check=True
    )


def free_port() -> int:
    import socket

    for port in random.sample(PORTS, len(PORTS)):
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18150-18198")


@contextlib.contextmanager
def lan_host() -> Iterator[tuple[str, str, str]]:
    """(namespace, this machine's address on the pair, the namespace's address)."""
    assert os.geteuid() == 0, "network namespaces need root (the test tier runs as root)"
    used = ip("-o", "addr").stdout
    for _ in range(50):
        n = random.randint(0, 255)
        if f"10.213.{n}." not in used:
            break
    else:
        raise RuntimeError("no unused 10.213.N.0/30 subnet")
    suffix = f"{os.getpid() % 10000}{secrets.token_hex(2)}"
    ns, here, there = f"{SESSION}-lan", f"hl{suffix}a", f"hl{suffix}b"
    mine, theirs = f"10.213.{n}.1", f"10.213.{n}.2"
    ip("netns", "add", ns)
    try:
        ip("link", "add", here, "type", "veth", "peer", "name", there)
        ip("link", "set", there, "netns", ns)
        ip("addr", "add", f"{mine}/30", "dev", here)
        ip("link", "set", here, "up")
        ip("-n", ns, "addr", "add", f"{theirs}/30", "dev", there)
        ip("-n", ns, "link", "set", there, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns, mine, theirs
    finally:
        subprocess.run([find_program("ip") or "ip", "link", "del", here], capture_output=True)
        subprocess.run([find_program("ip") or "ip", "netns", "del", ns], capture_output=True)


def curl_from(ns: str, url: str) -> int:
    """curl's exit code for `url` from inside `ns` (0: an HTTP answer came; 7: refused;
    28: timed out)."""
    done = subprocess.run(
        [
            find_program("ip") or "ip",
            "netns",
            "exec",
            ns,
            find_program("curl") or "curl",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "3",
            url,
        ],
        capture_output=True,
        text=True,
    )
    return done.returncode


@contextlib.contextmanager
def proxy_on_all_addresses(work: Path) -> Iterator[int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    env |= {
        "HOMELAB_MANAGER_URL": "http://127.0.0.1:9",  # not needed for /healthz
        "HOMELAB_MANAGER_TOKEN": token(),
        "HOMELAB_API_KEYS": "lan-" + secrets.token_urlsafe(24),
        "HOMELAB_PROXY_HOST": "0.0.0.0",
        "HOMELAB_PROXY_PORT": str(port),
        "HOMELAB_STATE_DIR": str(work / "state"),  # its job store, not the user's
    }
    log = (work / "proxy.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None, (work / "proxy.log").read_text()
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


async def test_a_model_port_is_closed_to_the_lan_and_the_proxy_port_is_open(
    docker_env: Any, hf_cache: str, tmp_path: Path
) -> None:
    settings = ManagerSettings(
        manager_token=token(),
        hf_cache=hf_cache,
        model_host="127.0.0.1",
        model_bind_host="127.0.0.1",
    )
    runtime = DockerRuntime(settings)
    name = f"{SESSION}-isolated"
    spec = text_spec("isolated", free_port())
    await runtime.start(name, spec)
    try:
        base = runtime.base_url(spec)
        key = None
        async with httpx.AsyncClient(base_url=base, timeout=5, trust_env=False) as client:
            for _ in range(100):
                instance = await runtime.inspect(name, spec)
                key = instance.api_key if instance else None
                auth = {"Authorization": f"Bearer {key}"} if key else {}
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/health", headers=auth)).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            assert key, "the runtime made no upstream key"
            with lan_host() as (ns, mine, _theirs), proxy_on_all_addresses(tmp_path) as port:
                assert curl_from(ns, f"http://{mine}:{port}/healthz") == 0
                assert curl_from(ns, f"http://{mine}:{spec.port}/health") != 0
                assert curl_from(ns, f"http://{mine}:{spec.port}/v1/models") != 0
            # On the proxy-facing address the server answers, but only with its key.
            assert (await client.get("/v1/models")).status_code == 401
            assert (await client.get("/health")).status_code == 401
            auth = {"Authorization": f"Bearer {key}"}
            assert (await client.get("/v1/models", headers=auth)).status_code == 200
    finally:
        await runtime.stop(name, spec, timeout=5)
        await runtime.aclose()
