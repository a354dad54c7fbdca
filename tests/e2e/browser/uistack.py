"""The browser tests' harness: the real stack they run against, and page helpers.

The stack, all real processes on loopback (ports 18500-18599):

- ``python -m manager`` with the process runtime, serving a models.json whose
  model servers are ``tests.fixtures.fakevllm`` host processes (two text models, one
  image model; the image model and ``slow`` load for a few seconds so a swap is visible);
- ``python -m proxy`` in front of it (and a second proxy with API keys enabled);
- Debian's Chromium driven by Python ``playwright`` (``playwright install`` is not
  used: its download does not work offline).

`require_browser` skips with the reason when Chromium or playwright is missing
(CI refuses a skipped ``browser`` tier). Every process started here is stopped at the end of the
session, model servers included (the manager's process registry is checked for
leftovers). Screenshots of each step go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import VllmRuntime
from wire.procs import is_alive, read_registry

REPO_ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO_ROOT / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
CHROMIUM = os.environ.get("HOMELAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PORTS = range(18500, 18600)
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
MANAGER_TOKEN = "ui-tests-manager-4f7b9c2e1d"
API_KEY = "ui-tests-key-8e3a61f0c5b2"
# Deadlines, not performance assertions: they only stop a broken start from hanging.
START_DEADLINE_S = 60.0
SLOW_LOAD_S = "3"
"""How long the image model and `slow` take to load: long enough to see the swap."""


_TAKEN: set[int] = set()
"""Ports handed out in this test process. A model server's port is free while the model
is stopped, so a later stack must not get it: hand each port out once."""


def free_port() -> int:
    """A port from this suite's range that nothing listens on and no stack was given.

    Tried in random order: two test runs at once on the shared machine would otherwise
    both take the lowest free ports, and one's health check could reach the other's server."""
    for port in random.sample(PORTS, len(PORTS)):
        if port in _TAKEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _TAKEN.add(port)
        return port
    raise RuntimeError("no free port in 18500-18599")


def fake_entry(kind: str, **extra: object) -> dict:
    """One models.json entry: a fakevllm server launched by the manager's process runtime."""
    port = free_port()
    return {
        "type": kind,
        "container": f"ui-test-{port}",
        "port": port,
        "image": "homelab-ai/fakevllm:test",
        "model": f"fake/{kind}-{port}",
        "command": [sys.executable, "-m", "tests.fixtures.fakevllm"],
        "gpu": False,
        "start_timeout": 60,
        **extra,
    }


def audio_entry(kind: str, **extra: object) -> dict:
    """One models.json entry: a stt or tts model served by the stand-in audio server
    (tests/fixtures/fakeaudio), launched by the manager's process runtime."""
    port = free_port()
    return {
        "type": kind,
        "container": f"ui-test-{port}",
        "port": port,
        "image": "homelab-ai/audioserver:test",
        "model": "fake/voice.onnx" if kind == "tts" else "fake/whisper",
        "command": [sys.executable, "-m", "tests.fixtures.fakeaudio"],
        "device": "cpu",
        "gpu": False,
        "start_timeout": 60,
        "description": f"Stand-in {kind} model (tests/fixtures/fakeaudio).",
        **extra,
    }


def fake_models(slow_load: str = SLOW_LOAD_S) -> dict:
    """The catalogue: `chat`, `slow` (loads in `slow_load` seconds) and `paint` (an image
    model that loads in SLOW_LOAD_S seconds)."""
    return {
        "chat": fake_entry(
            "text",
            env={"FAKEVLLM_STREAM_DELAY": "0.12"},
            tool_calls={"parser": "hermes"},  # /models shows "tools" (fakevllm ignores the flags)
            description="Fake chat model (echoes you, word by word).",
        ),
        "slow": fake_entry(
            "text",
            env={"FAKEVLLM_LOAD_SECONDS": slow_load, "FAKEVLLM_STREAM_DELAY": "0.05"},
            description=(
                "Fake chat model that takes a while to load, so that a swap between two"
                " models is visible in the status bar and in the waiting line."
            ),
        ),
        "paint": fake_entry(
            "image",
            env={"FAKEVLLM_KIND": "image", "FAKEVLLM_LOAD_SECONDS": SLOW_LOAD_S},
            sizes=["64x64", "128x128"],
            max_n=2,
            steps=2,
            gpu_memory_mib=2048,
            description="Fake image model (solid colours).",
        ),
    }


def real_models(vllm_runtime: VllmRuntime, tiny: Path, load_deadline_s: float) -> tuple[dict, dict]:
    """The real catalogue: ``smollm2`` (real vLLM, CPU build) and ``tiny-sd`` (the real
    diffusers image server with the tiny random-weight pipeline folder `tiny`, the
    session's `tiny_sd` fixture), plus the manager settings a real swap needs. Both loads
    may take minutes on a busy machine: `load_deadline_s` bounds each (a deadline, not an
    expectation)."""
    offline = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    smol_port, image_port = free_port(), free_port()
    models = {
        "smollm2": {
            "type": "text",
            "container": f"ui-real-{smol_port}",
            "port": smol_port,
            "image": "vllm/vllm-openai:v0.32.0",
            "model": str(vllm_runtime.model_dir),
            "command": [str(vllm_runtime.python), "-m", "vllm.entrypoints.openai.api_server"],
            "args": [
                "--enforce-eager",
                "--gpu-memory-utilization",
                "0.2",
                "--max-model-len",
                "2048",
            ],
            "env": offline,
            "gpu": False,
            "start_timeout": load_deadline_s,
            "description": "SmolLM2-135M-Instruct on vLLM's CPU build.",
        },
        "tiny-sd": {
            "type": "image",
            "container": f"ui-real-{image_port}",
            "port": image_port,
            "image": "homelab-ai/imageserver:0.1.0",
            "model": str(tiny),
            "command": [sys.executable, "-m", "imageserver"],
            "device": "cpu",
            "dtype": "fp32",
            "sizes": ["128x128", "64x64"],
            "steps": 2,
            "env": offline,
            "gpu": False,
            "start_timeout": load_deadline_s,
            "description": "A tiny random-weight Stable Diffusion pipeline (its pictures are noise).",
        },
    }
    settings = {"HOMELAB_QUEUE_TIMEOUT": str(load_deadline_s), "HOMELAB_STOP_TIMEOUT": "30"}
    return models, settings


@dataclass
class Proc:
    """A started child process, stopped with its whole process group."""

    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout)


def start(name: str, args: list[str], env: dict[str, str], log: Path) -> Proc:
    out = log.open("wb")
    popen = subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out.close()
    return Proc(name, popen, log)


def wait_http(proc: Proc, url: str) -> None:
    """Wait until `url` answers 200; fail with the process's log if it dies or never does."""
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            pytest.fail(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"{proc.name} did not answer {url} within {START_DEADLINE_S}s:\n{proc.tail()}")


@dataclass
class Stack:
    """The running manager and proxies."""

    manager_url: str
    proxy_url: str
    auth_proxy_url: str
    models: dict
    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def manager(self, method: str, path: str, **kw: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {MANAGER_TOKEN}"}
        return httpx.request(method, self.manager_url + path, headers=headers, timeout=60, **kw)

    def stop_all_models(self) -> None:
        """Stop every model server (a clean GPU for the next test)."""
        for name in self.models:
            with contextlib.suppress(httpx.HTTPError):
                self.manager("POST", f"/v1/models/{name}/stop")

    def stop_models_at_exit(self) -> None:
        """`stop_all_models`, but a model still loading is left to `_stop_leftover_servers`:
        the manager answers a stop only once the load is done, and a real vLLM load that a
        test cancelled (tests/e2e/test_mcp_real_models.py) runs on for up to a minute."""
        try:
            listed = self.manager("GET", "/v1/models").json()["data"]
            loading = {m["id"] for m in listed if m["state"] == "starting"}
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            loading = set()
        for name in self.models:
            if name not in loading:
                with contextlib.suppress(httpx.HTTPError):
                    self.manager("POST", f"/v1/models/{name}/stop")

    def ensure(self, name: str) -> None:
        """Make `name` resident and ready, through the manager."""
        res = self.manager("POST", f"/v1/models/{name}/ensure")
        assert res.status_code == 200, res.text


def _server_modules(models: dict) -> list[str]:
    """The `-m` module of each model's command: what a leftover server's argv contains."""
    found = []
    for spec in models.values():
        command = spec.get("command") or []
        if "-m" in command[:-1]:
            found.append(command[command.index("-m") + 1])
    return found


def _stop_leftover_servers(log_dir: Path, modules: list[str], grace_s: float = 10.0) -> None:
    """Stop model servers the manager's process registry (`wire.procs`) still lists
    (belt and braces, and a model still loading at exit): SIGTERM to each one's process
    group, SIGKILL to those not gone within `grace_s`."""
    pids = [
        record.pid
        for record in read_registry(log_dir).values()
        if record.pid > 1 and _runs_one_of(record.pid, modules)
    ]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _runs_one_of(pid: int, modules: list[str]) -> bool:
    """Only our model servers are ever killed here (a pid may have been reused)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(m.encode() in argv for m in modules)


@contextlib.contextmanager
def run_stack(
    workdir: Path,
    models: dict,
    default_model: str,
    name: str = "ui",
    manager_settings: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Start a manager (process runtime) serving `models`, a proxy and an API-key proxy;
    stop them all (model servers included) on exit. Fails with the log tail if one does
    not start. Logs go to test-artifacts/<name>-*.log. `manager_settings` adds or
    overrides HOMELAB_* variables of the manager."""
    models_file = workdir / "models.json"
    models_file.write_text(json.dumps(models, indent=2))
    manager_port, proxy_port, auth_port = (free_port() for _ in range(3))
    log_dir = workdir / "model-logs"
    ARTIFACTS.mkdir(exist_ok=True)

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    base_env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + base_env.get("PYTHONPATH", "")
    base_env["PYTHONUNBUFFERED"] = "1"
    manager_env = {
        **base_env,
        "HOMELAB_MODELS_FILE": str(models_file),
        "HOMELAB_MANAGER_TOKEN": MANAGER_TOKEN,
        "HOMELAB_MANAGER_HOST": "127.0.0.1",
        "HOMELAB_MANAGER_PORT": str(manager_port),
        "HOMELAB_RUNTIME": "process",
        "HOMELAB_LOG_DIR": str(log_dir),
        "HOMELAB_GPU_RELEASE_TIMEOUT": "0",
        "HOMELAB_STOP_TIMEOUT": "5",
        "HOMELAB_QUEUE_TIMEOUT": "60",
        "HOMELAB_SSE_HEARTBEAT": "2",
        **(manager_settings or {}),
    }
    proxy_env = {
        **base_env,
        "HOMELAB_MANAGER_URL": f"http://127.0.0.1:{manager_port}",
        "HOMELAB_MANAGER_TOKEN": MANAGER_TOKEN,
        "HOMELAB_PROXY_HOST": "127.0.0.1",
        "HOMELAB_PROXY_PORT": str(proxy_port),
        "HOMELAB_DEFAULT_MODEL": default_model,
        "HOMELAB_MODELS_CACHE_TTL": "0",
        "HOMELAB_JOBS_URL": str(workdir / "jobs.db"),
        "HOMELAB_API_KEYS": "off",  # the open proxy; auth_env below is the one with a key
    }
    auth_env = {
        **proxy_env,
        "HOMELAB_PROXY_PORT": str(auth_port),
        "HOMELAB_API_KEYS": API_KEY,
        "HOMELAB_JOBS_URL": str(workdir / "jobs-auth.db"),
    }

    stack = Stack(
        manager_url=f"http://127.0.0.1:{manager_port}",
        proxy_url=f"http://127.0.0.1:{proxy_port}/",
        auth_proxy_url=f"http://127.0.0.1:{auth_port}/",
        models=models,
        workdir=workdir,
    )
    try:
        manager = start(
            "manager",
            [sys.executable, "-m", "manager"],
            manager_env,
            ARTIFACTS / f"{name}-manager.log",
        )
        stack.procs.append(manager)
        wait_http(manager, f"{stack.manager_url}/healthz")
        # The two proxies start side by side (each takes seconds to import), then are
        # waited for in turn.
        proxies = (
            ("proxy", proxy_env, stack.proxy_url),
            ("auth-proxy", auth_env, stack.auth_proxy_url),
        )
        for label, env, _ in proxies:
            proc = start(
                label, [sys.executable, "-m", "proxy"], env, ARTIFACTS / f"{name}-{label}.log"
            )
            stack.procs.append(proc)
        for proc, (_, _, url) in zip(stack.procs[1:], proxies, strict=True):
            wait_http(proc, f"{url}healthz")
        yield stack
    finally:
        if stack.procs and stack.procs[0].popen.poll() is None:
            stack.stop_models_at_exit()
        for proc in reversed(stack.procs):
            proc.stop()
        _stop_leftover_servers(log_dir, _server_modules(models))
        # Model server logs are useful when a test failed.
        with contextlib.suppress(OSError):
            shutil.copytree(log_dir, ARTIFACTS / f"{name}-model-logs", dirs_exist_ok=True)


def require_browser() -> None:
    """Skip (with the fix) when Chromium or Python playwright is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set HOMELAB_CHROMIUM)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Python playwright is not installed (pip install -e '.[dev]')")


class Screens:
    """Numbered screenshots of one test's steps, in test-artifacts/screenshots/."""

    def __init__(self, page: object, test_name: str) -> None:
        self.page = page
        self.prefix = re.sub(r"[^A-Za-z0-9_-]+", "-", test_name).strip("-")
        self.count = 0
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for old in SCREENSHOTS.glob(f"{self.prefix}--*.png"):
            old.unlink()

    def __call__(self, step: str) -> Path:
        self.count += 1
        path = SCREENSHOTS / f"{self.prefix}--{self.count:02d}-{step}.png"
        self.page.screenshot(path=str(path))  # type: ignore[attr-defined]
        return path


@dataclass
class Ui:
    """One browser page on the terminal, with helpers in the user's terms."""

    page: object
    shot: Screens
    errors: list[str]

    @property
    def input(self):  # noqa: ANN201 (a playwright Locator)
        return self.page.locator("#prompt-input")  # type: ignore[attr-defined]

    def type_line(self, text: str) -> None:
        """Type a line at the prompt and press Enter, the way a user does."""
        self.input.click()
        self.input.press_sequentially(text)
        self.input.press("Enter")

    def answered(self, text: str) -> None:
        """The newest answer reads `text` and is finished (the prompt takes input again)."""
        from playwright.sync_api import expect

        answer = self.page.locator(".entry.answer").last  # type: ignore[attr-defined]
        expect(answer.locator(".answer-body")).to_have_text(text)
        expect(answer).not_to_have_class(re.compile(r"\bstreaming\b"))
        expect(self.page.locator("#send-btn")).to_have_text("[send]")  # type: ignore[attr-defined]

    def wait_ready(self, model: str = "chat") -> None:
        """The page has loaded, listed the models and shows `model>` at the prompt."""
        from playwright.sync_api import expect

        expect(self.page.locator("#prompt-label")).to_have_text(f"{model}>")  # type: ignore[attr-defined]
        expect(self.page.locator("#live")).to_have_attribute("data-status", "connected")  # type: ignore[attr-defined]


def load(page: object, url: str, errors: list[str]) -> None:
    """Open `url` and wait until the UI's script runs.

    Chromium aborts loads with ERR_NETWORK_CHANGED when a network interface comes
    or goes (another Docker container starting on a shared machine): a page whose
    module scripts were cut off that way is loaded once more; any other failure is not.
    """
    for attempt in (1, 2):
        page.goto(url)  # type: ignore[attr-defined]
        try:
            page.wait_for_selector("html[data-ui=started]", state="attached", timeout=15_000)  # type: ignore[attr-defined]
            return
        except Exception:
            if attempt == 2 or not any("ERR_NETWORK_CHANGED" in e for e in errors):
                raise


def open_page(
    browser: object, url: str, test_name: str, viewport: dict, **options: object
) -> Iterator[Ui]:
    """A fresh browser context (empty storage) on `url`; asserts no uncaught page error at the end.
    `options`: more of playwright's context options (a phone's ``has_touch``, ``is_mobile``)."""
    context = browser.new_context(viewport=viewport, accept_downloads=True, **options)  # type: ignore[attr-defined]
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on(
        "console",
        lambda msg: (
            errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None
        ),
    )
    load(page, url, errors)
    ui = Ui(page, Screens(page, test_name), errors)
    try:
        yield ui
    finally:
        context.close()
    # An uncaught exception in the page is a bug even when the test's checks passed; so is
    # anything the proxy's Content-Security-Policy refused (the UI must live within it).
    uncaught = [e for e in errors if e.startswith("uncaught")]
    assert not uncaught, "\n".join(uncaught)
    refused = [e for e in errors if "Content Security Policy" in e]
    assert not refused, "\n".join(refused)


def natural_width(locator) -> int:  # noqa: ANN001 (a playwright Locator)
    """The decoded width of an <img>, once it has loaded (0 if it never decodes)."""
    locator.page.wait_for_function("img => img.complete", arg=locator.element_handle())
    return locator.evaluate("img => img.naturalWidth")


def record_answer_text(ui: Ui) -> None:
    """Start recording every text the newest answer shows, as it changes."""
    ui.page.evaluate(
        """() => {
          window.__seen = [];
          new MutationObserver(() => {
            const body = document.querySelector('.entry.answer:last-of-type .answer-body')
              ?? [...document.querySelectorAll('.entry.answer .answer-body')].pop();
            const text = body ? body.textContent : '';
            if (text && window.__seen[window.__seen.length - 1] !== text) window.__seen.push(text);
          }).observe(document.getElementById('scrollback'), {childList: true, subtree: true, characterData: true});
        }"""
    )
