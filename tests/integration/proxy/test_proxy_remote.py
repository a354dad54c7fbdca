"""Remote endpoints and fallbacks (the proxy's catalogue, HOMELAB_CATALOGUE) with real
processes: the real proxy, the real manager of the live stack (proxy_live.py), and a
remote OpenAI-compatible endpoint played by a second fakevllm process on loopback that
wants its own key, driven with the real `openai` SDK:

    openai SDK ──▶ proxy A ──▶ manager ──▶ fakevllm (it-chat)
                        └────────────────▶ fakevllm "standin" (remote-chat, key from a file)
                        └────────────────▶ a dead port ("gone": gone-chat)
    openai SDK ──▶ proxy B ──▶ a dead manager port; it-chat falls back to remote-chat
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import openai
import pytest
from proxy_live import (
    TEMPLATE,
    LiveStack,
    PortTaken,
    _process,
    _stop_model_servers,
    _wait_ours,
    free_ports,
)

from manager.settings import ManagerSettings
from tests.integration.conftest import FAKE_COMMAND, FAKE_ENV, text_spec

REMOTE_KEY = "rk-" + secrets.token_urlsafe(24)
REMOTE = "remote-chat"
GONE = "gone-chat"
WRONG = "wrong-key-chat"


@contextlib.contextmanager
def _dead_port() -> Iterator[int]:
    """A loopback port bound but not listening (connections are refused) for as long as
    the block runs, so no server of this run or another can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextlib.contextmanager
def _standin(work: Path) -> Iterator[str]:
    """A fakevllm text server as a remote endpoint with its own key; yields its /v1 URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOMELAB_", "FAKEVLLM_"))}
    for attempt in range(3):
        (port,) = free_ports(1)
        cmd = [
            sys.executable,
            "-m",
            "tests.fixtures.fakevllm",
            "--model",
            "standin/model",
            "--served-model-name",
            REMOTE,
            "--api-key",
            REMOTE_KEY,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        base = f"http://127.0.0.1:{port}/v1"

        def is_ours(base: str = base) -> bool:
            r = httpx.get(
                base + "/models", headers={"Authorization": f"Bearer {REMOTE_KEY}"}, timeout=2
            )
            return r.status_code == 200 and r.json()["data"][0]["id"] == REMOTE

        try:
            with _process(cmd, env, work / "standin.log") as proc:
                _wait_ours(proc, work / "standin.log", is_ours)
                yield base
                return
        except PortTaken:
            if attempt == 2:
                raise


def _catalogue(work: Path, remote_base: str, dead_port: int) -> Path:
    key_file = work / "standin.key"
    key_file.write_text(REMOTE_KEY + "\n")
    key_file.chmod(0o600)
    wrong_key = work / "wrong.key"
    wrong_key.write_text("rk-not-the-key-0123456789\n")
    wrong_key.chmod(0o600)
    path = work / "catalogue.json"
    path.write_text(
        json.dumps(
            {
                "endpoints": {
                    "standin": {
                        "base_url": remote_base,
                        "key_file": "standin.key",
                        "models": {REMOTE: {"type": "text", "tools": True}},
                    },
                    "wrongkey": {
                        "base_url": remote_base,
                        "key_file": str(wrong_key),
                        "models": {WRONG: {"type": "text"}},
                    },
                    "gone": {
                        "base_url": f"http://127.0.0.1:{dead_port}/v1",
                        "models": {GONE: {"type": "text"}},
                    },
                },
                "fallbacks": {"it-chat": {"then": [REMOTE]}},
            }
        )
    )
    return path


@contextlib.contextmanager
def _proxy(work: Path, name: str, manager_url: str, token: str, catalogue: Path) -> Iterator[str]:
    """An open proxy (no API keys) with the catalogue; yields its URL once it lists the
    remote model."""
    (work / "app" / "templates").mkdir(parents=True, exist_ok=True)
    (work / "app" / "templates" / "index.html").write_text(TEMPLATE)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    for attempt in range(3):
        (port,) = free_ports(1)
        url = f"http://127.0.0.1:{port}"
        env = {
            **base_env,
            "HOMELAB_MANAGER_URL": manager_url,
            "HOMELAB_MANAGER_TOKEN": token,
            "HOMELAB_PROXY_HOST": "127.0.0.1",
            "HOMELAB_PROXY_PORT": str(port),
            "HOMELAB_API_KEYS": "off",
            "HOMELAB_APP_DIR": str(work / "app"),
            "HOMELAB_JOBS_URL": str(work / f"{name}-jobs-{attempt}.db"),
            "HOMELAB_CATALOGUE": str(catalogue),
            "HOMELAB_MANAGER_OUTAGE_WINDOW": "1",
        }

        def is_ours(url: str = url) -> bool:
            models = httpx.get(url + "/v1/models", timeout=5).json()["data"]
            return REMOTE in {m["id"] for m in models}

        log = work / f"{name}.log"
        try:
            with _process([sys.executable, "-m", "proxy"], env, log) as proc:
                _wait_ours(proc, log, is_ours)
                yield url
                return
        except PortTaken:
            if attempt == 2:
                raise


class Setup(NamedTuple):
    a: str
    """Proxy A's URL: on the live stack's manager."""
    b: str
    """Proxy B's URL: on a dead manager port."""
    catalogue: Path


@pytest.fixture(scope="module")
def remote_setup(
    live_stack: LiveStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("proxy-remote")
    with _standin(work) as remote_base, _dead_port() as dead_endpoint, _dead_port() as dead_manager:
        catalogue = _catalogue(work, remote_base, dead_endpoint)
        token = live_stack.manager_token
        with (
            _proxy(work, "proxy-a", live_stack.manager_url, token, catalogue) as a,
            _proxy(work, "proxy-b", f"http://127.0.0.1:{dead_manager}", token, catalogue) as b,
        ):
            yield Setup(a, b, catalogue)


def _sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _polled(url: str) -> dict[str, dict]:
    """/v1/models once both endpoints have been polled (reachable no longer null)."""
    for _ in range(600):
        models = {m["id"]: m for m in httpx.get(url + "/v1/models", timeout=5).json()["data"]}
        if all(models[m]["reachable"] is not None for m in (REMOTE, GONE, WRONG)):
            return models
        time.sleep(0.05)
    raise AssertionError("the endpoints were never polled")


def test_models_show_backend_capabilities_fallbacks_and_reachability(
    remote_setup: Setup, live_stack: LiveStack
) -> None:
    url = remote_setup.a
    models = _polled(url)
    remote, gone, local = models[REMOTE], models[GONE], models[live_stack.text]
    assert (remote["backend"], remote["endpoint"], remote["reachable"]) == (
        "remote",
        "standin",
        True,
    )
    assert (remote["type"], remote["tools"], remote["vision"]) == ("text", True, False)
    assert (gone["reachable"], gone["state"]) == (False, "failed")
    assert gone["last_error"]
    wrong = models[WRONG]  # its key file holds a key the endpoint refuses
    assert wrong["reachable"] is False and "answered 401" in wrong["last_error"]
    assert local["backend"] == "vllm" and "reachable" not in local
    assert local["fallbacks"] == [REMOTE]
    assert models[live_stack.image]["backend"] == "diffusers"
    # the SDK reads the extra fields too
    listed = {m.id: m.model_dump() for m in _sdk(url).models.list()}
    assert listed[REMOTE]["backend"] == "remote"


def test_a_remote_model_answers_plain_and_streamed_with_its_key_and_the_header(
    remote_setup: Setup,
) -> None:
    url = remote_setup.a
    sdk = _sdk(url)
    raw = sdk.chat.completions.with_raw_response.create(
        model=REMOTE, messages=[{"role": "user", "content": "hello remote"}]
    )
    assert raw.headers["x-homelab-served-by"] == f"{REMOTE}@standin"
    assert raw.parse().choices[0].message.content.startswith(f"[{REMOTE}]")
    with sdk.chat.completions.with_streaming_response.create(
        model=REMOTE, messages=[{"role": "user", "content": "stream it"}], stream=True
    ) as streamed:
        assert streamed.headers["x-homelab-served-by"] == f"{REMOTE}@standin"
        text = "".join(
            chunk.choices[0].delta.content or "" for chunk in streamed.parse() if chunk.choices
        )
    assert text.startswith(f"[{REMOTE}]")
    metrics = httpx.get(url + "/metrics", timeout=5).text
    assert (
        'homelab_proxy_requests_total{endpoint="/v1/chat/completions",'
        f'model="{REMOTE}",status="200"}} 2.0'
    ) in metrics


def test_a_local_model_names_its_host_in_the_header(
    remote_setup: Setup, live_stack: LiveStack
) -> None:
    url = remote_setup.a
    raw = _sdk(url).chat.completions.with_raw_response.create(
        model=live_stack.text, messages=[{"role": "user", "content": "hi"}]
    )
    content = raw.parse().choices[0].message.content
    assert raw.headers["x-homelab-served-by"] == f"{live_stack.text}@local", content
    assert content.startswith(f"[{live_stack.text}")


def test_a_fallback_serves_when_the_managers_host_is_down(
    remote_setup: Setup, live_stack: LiveStack
) -> None:
    url = remote_setup.b
    sdk = _sdk(url)
    raw = sdk.chat.completions.with_raw_response.create(
        model=live_stack.text, messages=[{"role": "user", "content": "anyone?"}]
    )
    assert raw.headers["x-homelab-served-by"] == f"{REMOTE}@standin"
    assert raw.parse().choices[0].message.content.startswith(f"[{REMOTE}]")
    with sdk.chat.completions.with_streaming_response.create(
        model=live_stack.text, messages=[{"role": "user", "content": "stream"}], stream=True
    ) as streamed:
        assert streamed.headers["x-homelab-served-by"] == f"{REMOTE}@standin"
        assert any(chunk.choices for chunk in streamed.parse())


def test_a_remote_that_is_down_is_a_clean_503(remote_setup: Setup) -> None:
    url = remote_setup.a
    with pytest.raises(openai.APIStatusError) as err:
        _sdk(url).chat.completions.create(model=GONE, messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 503
    body = err.value.response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == "endpoint_unavailable"
    assert body["error"]["source"] == "model_server"
    assert "gone" in body["error"]["message"]
    assert err.value.response.headers["retry-after"] == "5"


def test_a_batch_for_a_remote_model_runs_while_the_manager_is_away(
    remote_setup: Setup,
) -> None:
    url = remote_setup.b  # its manager's port is dead
    sdk = _sdk(url)
    line = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": REMOTE, "messages": [{"role": "user", "content": "batched"}]},
    }
    data = io.BytesIO((json.dumps(line) + "\n").encode())
    data.name = "batch.jsonl"
    upload = sdk.files.create(file=data, purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for _ in range(1200):
        batch = sdk.batches.retrieve(batch.id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            break
        time.sleep(0.1)
    assert batch.status == "completed" and batch.output_file_id
    out = json.loads(sdk.files.content(batch.output_file_id).text)
    assert out["response"]["body"]["choices"][0]["message"]["content"] == f"[{REMOTE}] batched"


@contextlib.contextmanager
def _own_manager(work: Path) -> Iterator[tuple[str, str, subprocess.Popen]]:
    """A manager of this test's own (process runtime) serving `it-chat` from a fakevllm
    process: (its URL, its token, its process), so the test may kill it."""
    token = secrets.token_urlsafe(32)
    log_dir = work / "own-logs"
    settings = ManagerSettings(manager_token=token, log_dir=log_dir, model_host="127.0.0.1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    try:
        for attempt in range(3):
            manager_port, model_port = free_ports(2)
            models = work / f"own-models-{attempt}.json"
            spec = text_spec("rm-chat", model_port, command=FAKE_COMMAND, env=FAKE_ENV)
            models.write_text(json.dumps({"it-chat": spec.model_dump(mode="json")}))
            url = f"http://127.0.0.1:{manager_port}"
            manager_env = {
                **env,
                "HOMELAB_MANAGER_TOKEN": token,
                "HOMELAB_MODELS_FILE": str(models),
                "HOMELAB_RUNTIME": "process",
                "HOMELAB_MANAGER_HOST": "127.0.0.1",
                "HOMELAB_MANAGER_PORT": str(manager_port),
                "HOMELAB_LOG_DIR": str(log_dir),
                "HOMELAB_GPU_RELEASE_TIMEOUT": "0",
                "HOMELAB_LOG_LEVEL": "warning",
            }

            def is_ours(url: str = url) -> bool:
                r = httpx.get(
                    url + "/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=2
                )
                return [m["id"] for m in r.json()["data"]] == ["it-chat"]

            log = work / "own-manager.log"
            try:
                with _process([sys.executable, "-m", "manager"], manager_env, log) as proc:
                    _wait_ours(proc, log, is_ours)
                    yield url, token, proc
                    return
            except PortTaken:
                if attempt == 2:
                    raise
    finally:
        _stop_model_servers(settings)


def test_a_fallback_serves_once_the_manager_is_killed(remote_setup: Setup, tmp_path: Path) -> None:
    catalogue = remote_setup.catalogue
    with (
        _own_manager(tmp_path) as (manager_url, token, manager),
        _proxy(tmp_path, "proxy-c", manager_url, token, catalogue) as url,
    ):
        sdk = _sdk(url)
        raw = sdk.chat.completions.with_raw_response.create(
            model="it-chat", messages=[{"role": "user", "content": "local first"}]
        )
        assert raw.headers["x-homelab-served-by"] == "it-chat@local"
        assert raw.parse().choices[0].message.content == "[it-chat] local first"

        manager.kill()
        manager.wait(10)
        for _ in range(600):  # the proxy notices: its readiness check fails
            if httpx.get(url + "/readyz", timeout=5).status_code == 503:
                break
            time.sleep(0.05)
        raw = sdk.chat.completions.with_raw_response.create(
            model="it-chat", messages=[{"role": "user", "content": "now?"}]
        )
        assert raw.headers["x-homelab-served-by"] == f"{REMOTE}@standin"
        assert raw.parse().choices[0].message.content == f"[{REMOTE}] now?"


def test_a_remote_that_refuses_the_proxys_key_is_a_502_not_the_clients_401(
    remote_setup: Setup,
) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        _sdk(remote_setup.a).chat.completions.create(
            model=WRONG, messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == 502  # the client's own key was fine
    body = err.value.response.json()["error"]
    assert (body["source"], body["code"]) == ("model_server", "endpoint_key_refused")
    assert "key_file" in body["message"]
