"""The fake vLLM server over real HTTP, driven by the real `openai` SDK (host processes).

Other engineers' tests rely on it behaving like vLLM, so its wire behaviour is
checked here: SSE streaming, base64 embeddings, error envelopes, multipart image
edits, chunked request bodies, refusing connections while loading, crashing on cue.
Ports 18190-18199.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from PIL import Image

from tests.integration.conftest import FAKE_COMMAND, ROOT, free_port

Starter = Callable[..., subprocess.Popen]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def fake() -> Iterator[Starter]:
    """Start fakevllm host processes; each is terminated (then killed) after the test."""
    procs: list[subprocess.Popen] = []

    def start(port: int, *args: str, wait: bool = True, **env: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [*FAKE_COMMAND, "--host", "127.0.0.1", "--port", str(port), *args],
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        deadline = time.monotonic() + 20
        while wait and not _port_open(port):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "fakevllm did not bind"
            time.sleep(0.05)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout:
            proc.stdout.close()


def client(port: int) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=10
    )


def test_chat_stream_and_errors_through_the_openai_sdk(fake: Starter) -> None:
    fake(18190, "--model", "org/m", "--served-model-name", "chat")
    sdk = client(18190)
    reply = sdk.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "ping pong"}]
    )
    assert reply.choices[0].message.content == "[chat] ping pong"
    assert [m.id for m in sdk.models.list()] == ["chat"]

    stream = sdk.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "stream me please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "[chat] stream me please"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4

    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["message"] == "The model `nope` does not exist."
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="chat", messages=[])


def test_completions_stream_embeddings_and_chunked_bodies(fake: Starter) -> None:
    fake(18191, "--model", "org/m", "--served-model-name", "m", FAKEVLLM_STREAM_DELAY="0.01")
    sdk = client(18191)
    stream = sdk.completions.create(model="m", prompt="a b", stream=True, max_tokens=2)
    assert "".join(c.choices[0].text for c in stream) == "[m] a"
    vectors = sdk.embeddings.create(model="m", input=["x", "y"])  # the SDK asks for base64
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 8

    def body() -> Iterator[bytes]:  # httpx sends a generator with Transfer-Encoding: chunked
        yield b'{"prompt": "chunked'
        yield b' body", "max_tokens": 9}'

    raw = httpx.post("http://127.0.0.1:18191/v1/completions", content=body(), trust_env=False)
    assert raw.json()["choices"][0]["text"] == "[m] chunked body"
    bad = httpx.post("http://127.0.0.1:18191/v1/completions", content=b"{", trust_env=False)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "BadRequestError"
    assert httpx.get("http://127.0.0.1:18191/nope", trust_env=False).status_code == 404


def test_images_through_the_openai_sdk(fake: Starter) -> None:
    fake(
        18192,
        FAKEVLLM_KIND="image",
        HOMELAB_IMAGE_SERVED_NAME="img",
        HOMELAB_IMAGE_SIZES="32x32,16x8",
        FAKEVLLM_LOAD_SECONDS="0.3",
    )
    health = httpx.get("http://127.0.0.1:18192/health", trust_env=False)
    assert health.status_code == 200 and health.json()["status"] == "loading"
    early = httpx.post(
        "http://127.0.0.1:18192/v1/images/generations", json={"prompt": "x"}, trust_env=False
    )
    assert early.status_code == 503 and early.json()["error"]["code"] == "model_loading"
    for _ in range(100):
        if httpx.get("http://127.0.0.1:18192/health", trust_env=False).json()["status"] == "ready":
            break
        time.sleep(0.05)
    sdk = client(18192)
    made = sdk.images.generate(model="img", prompt="a boat", size="16x8", n=1)  # type: ignore[arg-type]
    assert Image.open(io.BytesIO(base64.b64decode(made.data[0].b64_json))).size == (16, 8)
    source = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(source, format="PNG")
    edited = sdk.images.edit(
        model="img", image=("in.png", source.getvalue(), "image/png"), prompt="make it red"
    )
    assert Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json))).size == (32, 32)
    with pytest.raises(openai.BadRequestError):
        sdk.images.generate(model="img", prompt="x", size="1024x1024")


def test_loading_refuses_connections_then_serves(fake: Starter) -> None:
    proc = fake(18193, wait=False, FAKEVLLM_LOAD_SECONDS="1")
    time.sleep(0.3)
    assert proc.poll() is None and not _port_open(18193)
    deadline = time.monotonic() + 20
    while not _port_open(18193):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert httpx.get("http://127.0.0.1:18193/health", trust_env=False).status_code == 200


def test_fail_load_exits_1_and_crash_after_exits_3(fake: Starter) -> None:
    failing = fake(18194, wait=False, FAKEVLLM_FAIL_LOAD="1")
    assert failing.wait(20) == 1
    assert "Engine core initialization failed" in (failing.stdout.read() if failing.stdout else "")

    crashing = fake(18195, FAKEVLLM_CRASH_AFTER="2")
    for _ in range(2):
        reply = httpx.post(
            "http://127.0.0.1:18195/v1/completions", json={"prompt": "x"}, trust_env=False
        )
        assert reply.status_code == 200
    assert crashing.wait(20) == 3


def test_sigterm_stops_it_cleanly(fake: Starter) -> None:
    proc = fake(18196)
    proc.terminate()
    assert proc.wait(10) == 0


def test_the_module_runs_standalone_without_the_repo_on_sys_path(tmp_path) -> None:
    """The Docker image runs it as top-level `fakevllm` with only the stdlib (-S: no
    site-packages): it must import nothing from the project or third parties."""
    source = ROOT / "tests" / "fixtures" / "fakevllm"
    (tmp_path / "fakevllm").symlink_to(source, target_is_directory=True)
    out = subprocess.run(
        [sys.executable, "-E", "-s", "-S", "-c", "import fakevllm.server, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('tests', 'manager', 'httpx', 'pydantic')))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


async def test_sleep_levels_through_the_managers_warm_control(fake: Starter) -> None:
    """The stand-in's sleep mode, driven by `manager.warm.HttpWarmControl` as the manager
    drives vLLM's: level 1 keeps the weights (a plain wake serves), level 2 drops them
    (served only after the three-step wake that reloads them)."""
    from manager.spec import TextModel
    from manager.warm import HttpWarmControl, WarmFailure

    port = free_port()
    fake(port, "--served-model-name", "nap", FAKEVLLM_WEIGHTS_MIB="8")
    base = f"http://127.0.0.1:{port}"
    spec = TextModel(
        type="text", container="nap", port=port, image="a/b:1", model="m", warm={"level": 1}
    )
    level2 = spec.model_copy(update={"warm": spec.warm.model_copy(update={"level": 2})})
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    warm = HttpWarmControl()
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            for s in (spec, level2):
                assert await warm.is_sleeping(s, base, None) is False
                await warm.sleep(s, base, None)
                assert await warm.is_sleeping(s, base, None) is True
                assert (await http.post("/v1/chat/completions", json=chat)).status_code == 503
                await warm.wake(s, base, None)
                assert await warm.is_sleeping(s, base, None) is False
                reply = await http.post("/v1/chat/completions", json=chat)
                assert reply.json()["choices"][0]["message"]["content"] == "[nap] hi"
            await warm.sleep(level2, base, None)
            await warm.wake(spec, base, None)  # a plain wake after level 2: nothing reloaded
            assert (await http.post("/v1/chat/completions", json=chat)).status_code == 500
            stats = (await http.get("/_fake/stats")).json()
            assert (stats["sleeps"], stats["wakes"]) == (3, 3)
        with pytest.raises(WarmFailure, match="404"):
            await warm.sleep(spec, f"{base}/nowhere", None)
    finally:
        await warm.aclose()
