"""Named keys on real processes (docs/keys.md): `python -m proxy` with a key file made by
`python -m proxy keys`, a real manager (process runtime) and fakevllm model servers.

Three keys: ``root`` (admin, every model), ``alice`` (``k-chat`` and ``k-slow`` only) and
``kid`` (every model, one request a minute). Checked: scoping at /v1/models, a hidden
model's 404 at a chat route, over MCP and as a job; the limited key's 429 with
Retry-After while the manager saw no lease (the model it asked for is still stopped);
a key revoked in the file refused without a restart; a key revoked while its stream
runs: the stream finishes (docs/keys.md, "Revoking a key").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from proxy_live import (
    ROOT,
    TEMPLATE,
    PortTaken,
    _process,
    _stop_model_servers,
    _wait_ours,
    live_manager_env,
)

from manager.settings import ManagerSettings
from tests import tools
from tests.integration.conftest import FAKE_COMMAND, FAKE_ENV, text_spec
from tests.mcp_client import http_session, text_of

PORTS = range(18500, 18600)
MODELS = ("k-chat", "k-secret", "k-slow", "k-cold")


@dataclass
class KeyStack:
    url: str
    manager_url: str
    manager_token: str
    key_file: Path
    keys: dict[str, str]

    def client(self, name: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.keys[name]}"},
            timeout=60,
        )

    def manager_state(self, model: str) -> str:
        r = httpx.get(
            self.manager_url + "/v1/models",
            headers={"Authorization": f"Bearer {self.manager_token}"},
            timeout=10,
        )
        return next(m["state"] for m in r.json()["data"] if m["id"] == model)


def keys_cli(key_file: Path, *args: str) -> str:
    """`python -m proxy keys --file KEY_FILE ARGS` as a user runs it; its stdout."""
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "keys", "--file", str(key_file), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


@contextlib.contextmanager
def run_key_stack(work: Path) -> Iterator[KeyStack]:
    (work / "app" / "templates").mkdir(parents=True)
    (work / "app" / "templates" / "index.html").write_text(TEMPLATE)
    key_file = work / "state" / "keys.json"
    keys = {
        "root": keys_cli(key_file, "add", "root", "--admin"),
        "alice": keys_cli(key_file, "add", "alice", "--models", "k-chat,k-slow"),
        "kid": keys_cli(key_file, "add", "kid", "--rate", "1"),
        "temp": keys_cli(key_file, "add", "temp"),
    }
    token = secrets.token_urlsafe(32)
    log_dir = work / "logs"
    settings = ManagerSettings(manager_token=token, log_dir=log_dir, model_host="127.0.0.1")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    try:
        for attempt in range(3):
            manager_port, proxy_port, *ports = tools.free_ports(PORTS, 6)
            specs = {
                name: text_spec(
                    name,
                    port,
                    command=FAKE_COMMAND,
                    env={**FAKE_ENV, "FAKEVLLM_STREAM_DELAY": "0.2"}
                    if name == "k-slow"
                    else FAKE_ENV,
                )
                for name, port in zip(MODELS, ports, strict=True)
            }
            models_file = work / f"models-{attempt}.json"
            models_file.write_text(
                json.dumps({n: s.model_dump(mode="json") for n, s in specs.items()})
            )
            manager_url = f"http://127.0.0.1:{manager_port}"
            url = f"http://127.0.0.1:{proxy_port}"
            manager_env = live_manager_env(base_env, token, models_file, manager_port, log_dir)
            proxy_env = {
                **base_env,
                "HOMELAB_MANAGER_URL": manager_url,
                "HOMELAB_MANAGER_TOKEN": token,
                "HOMELAB_PROXY_HOST": "127.0.0.1",
                "HOMELAB_PROXY_PORT": str(proxy_port),
                "HOMELAB_KEY_FILE": str(key_file),  # no HOMELAB_API_KEYS: named keys only
                "HOMELAB_STATE_DIR": str(work / "state"),
                "HOMELAB_IMAGE_DIR": str(work / "images"),
                "HOMELAB_APP_DIR": str(work / "app"),
                "HOMELAB_PUBLIC_URL": url,
            }
            stack = KeyStack(url, manager_url, token, key_file, keys)

            def manager_is_ours(stack: KeyStack = stack) -> bool:
                return stack.manager_state("k-chat") in ("stopped", "ready", "starting")

            def proxy_is_ours(stack: KeyStack = stack) -> bool:
                r = stack.client("root").get("/readyz", timeout=2)
                return r.status_code == 200 and r.json()["manager"] == stack.manager_url

            try:
                with _process(
                    [sys.executable, "-m", "manager"], manager_env, work / "manager.log"
                ) as manager:
                    _wait_ours(manager, work / "manager.log", manager_is_ours)
                    with _process(
                        [sys.executable, "-m", "proxy"], proxy_env, work / "proxy.log"
                    ) as proxy:
                        _wait_ours(proxy, work / "proxy.log", proxy_is_ours)
                        yield stack
                        return
            except PortTaken:
                if attempt == 2:
                    raise
    finally:
        _stop_model_servers(settings)


@pytest.fixture(scope="module")
def key_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyStack]:
    with run_key_stack(tmp_path_factory.mktemp("proxy-keys")) as stack:
        yield stack


def chat(model: str, text: str = "hello", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def test_each_key_lists_only_its_models(key_stack: KeyStack) -> None:
    with key_stack.client("root") as root, key_stack.client("alice") as alice:
        assert {m["id"] for m in root.get("/v1/models").json()["data"]} == set(MODELS)
        assert [m["id"] for m in alice.get("/v1/models").json()["data"]] == ["k-chat", "k-slow"]
        r = alice.get("/v1/usage")
        assert r.json()["key"]["name"] == "alice"


def test_a_hidden_model_is_404_naming_no_hidden_model(key_stack: KeyStack) -> None:
    with key_stack.client("alice") as alice:
        r = alice.post("/v1/chat/completions", json=chat("k-secret"))
        assert r.status_code == 404, r.text
        err = r.json()["error"]
        assert err["code"] == "model_not_found"
        assert err["message"] == (
            "The model 'k-secret' does not exist. Known models: k-chat, k-slow"
        )
        # The same for a model that does not exist at all: nothing tells them apart.
        r = alice.post("/v1/chat/completions", json=chat("k-nothing"))
        assert r.json()["error"]["message"].endswith("Known models: k-chat, k-slow")
        # As a job (/rpc): refused the same way, naming no hidden model.
        r = alice.post(
            "/rpc",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "create_message",
                "params": {"model": "k-secret", "message": "hi"},
            },
        )
        text = r.text
        assert "k-secret' does not exist" in text and "k-cold" not in text
        r = alice.post("/v1/chat/completions", json=chat("k-chat"))
        assert r.status_code == 200, r.text


def test_a_hidden_model_over_mcp(key_stack: KeyStack) -> None:
    async def run() -> None:
        async with http_session(key_stack.url + "/mcp", key_stack.keys["alice"]) as session:
            tools_text = json.dumps(
                [t.model_dump(mode="json") for t in (await session.list_tools()).tools]
            )
            assert "k-chat" in tools_text
            assert "k-secret" not in tools_text and "k-cold" not in tools_text
            result = await session.call_tool(
                "txt2txt", {"model": "k-secret", "messages": [{"role": "user", "content": "x"}]}
            )
            assert result.is_error
            assert "k-cold" not in text_of(result)
            listed = await session.call_tool("list_models", {})
            assert "k-secret" not in text_of(listed) and "k-cold" not in text_of(listed)

    asyncio.run(run())


def test_a_limited_key_gets_429_and_spends_no_model_time(key_stack: KeyStack) -> None:
    with key_stack.client("kid") as kid, key_stack.client("root") as root:
        assert kid.post("/v1/chat/completions", json=chat("k-chat")).status_code == 200
        assert key_stack.manager_state("k-cold") == "stopped"
        r = kid.post("/v1/chat/completions", json=chat("k-cold"))
        assert r.status_code == 429, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        # The manager was never asked for k-cold: it was not even started.
        assert key_stack.manager_state("k-cold") == "stopped"
        metrics = root.get("/metrics").text
        assert 'homelab_proxy_lease_grants_total{model="k-cold"}' not in metrics
        assert 'homelab_proxy_key_refused_total{key="kid",reason="rate"} 1.0' in metrics
        (row,) = root.get("/v1/usage", params={"key": "kid"}).json()["data"]
        assert [m["model"] for m in row["models"]] == ["k-chat"]
        assert row["models"][0]["gpu_seconds"] > 0


def wait_refused(client: httpx.Client) -> None:
    """Poll until the key is refused (the proxy re-reads the file within seconds)."""
    for _ in range(300):
        if client.get("/v1/models").status_code == 401:
            return
        time.sleep(0.1)
    raise AssertionError("the revoked key is still accepted")


def test_a_key_revoked_in_the_file_is_refused_without_a_restart(key_stack: KeyStack) -> None:
    with key_stack.client("root") as root:
        extra = keys_cli(key_stack.key_file, "add", "visitor", "--models", "k-chat")
        visitor = httpx.Client(
            base_url=key_stack.url, headers={"Authorization": f"Bearer {extra}"}, timeout=60
        )
        with visitor:
            for _ in range(300):  # added: accepted without a restart too
                if visitor.get("/v1/models").status_code == 200:
                    break
                time.sleep(0.1)
            assert visitor.get("/v1/models").status_code == 200
            keys_cli(key_stack.key_file, "revoke", "visitor")
            wait_refused(visitor)
            r = visitor.post("/v1/chat/completions", json=chat("k-chat"))
            assert r.status_code == 401
        assert root.get("/v1/models").status_code == 200  # the others are untouched


def test_a_key_revoked_while_streaming_finishes_its_stream(key_stack: KeyStack) -> None:
    words = " ".join(f"w{i}" for i in range(60))  # 60 chunks, 0.2 s apart
    body = chat("k-slow", words, stream=True, stream_options={"include_usage": True})
    with key_stack.client("temp") as temp, key_stack.client("root") as root:
        with temp.stream("POST", "/v1/chat/completions", json=body) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            assert "chat.completion.chunk" in first
            keys_cli(key_stack.key_file, "revoke", "temp")
            with key_stack.client("temp") as again:
                wait_refused(again)
            # Refused now, and its stream is still in flight: not yet counted in usage.
            r = root.get("/v1/usage", params={"key": "temp"})
            assert r.json()["data"][0]["models"] == []
            after = [line for line in lines if line.startswith("data:")]
        assert after[-1] == "data: [DONE]"  # the stream in flight finished
        events = [json.loads(line[5:]) for line in [first, *after[:-1]]]
        content = "".join(
            e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]
        )
        assert content.split()[-1] == "w59"
        (row,) = root.get("/v1/usage", params={"key": "temp"}).json()["data"]
        (slow,) = row["models"]
        assert slow["requests"] == 1
        assert slow["completion_tokens"] > 0  # from the stream's usage event


def test_a_bad_key_file_stops_the_start_naming_the_file_the_key_and_the_reason(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "keys.json"
    keys_cli(key_file, "add", "alice")
    data = json.loads(key_file.read_text())
    data["keys"][0]["rate"] = -1
    key_file.write_text(json.dumps(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    env |= {"HOMELAB_MANAGER_TOKEN": secrets.token_urlsafe(32), "HOMELAB_KEY_FILE": str(key_file)}
    started = subprocess.run(
        [sys.executable, "-m", "proxy"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2
    assert f"{key_file}: key 1 ('alice'): 'rate' must be positive" in started.stderr


def test_a_job_counts_against_its_owners_usage(key_stack: KeyStack) -> None:
    from tests.integration.jobs.sse import read_events

    with key_stack.client("alice") as alice, key_stack.client("root") as root:

        def chat_requests() -> int:
            (row,) = root.get("/v1/usage", params={"key": "alice"}).json()["data"]
            return sum(m["requests"] for m in row["models"] if m["model"] == "k-chat")

        before = chat_requests()
        r = alice.post(
            "/rpc",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "create_message",
                "params": {"model": "k-chat", "message": "a job"},
            },
        )
        task = r.json()["result"]
        events = list(read_events(alice, f"/stream/{task['taskId']}"))
        assert any(e.event == "result" for e in events)
        assert chat_requests() == before + 1  # counted as alice's, not the runner's
