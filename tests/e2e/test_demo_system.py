"""The README's demo, tested: `./setup.sh demo --detach` on the CPU with the real engines.

setup.sh (with --no-deps: the session already has deps) builds the tiny diffusers
pipeline if needed and runs deploy/demo.py, which writes the demo models.json and
starts the real manager (process runtime) and the real proxy. Through the proxy, the
real `openai` SDK then asks real vLLM (CPU build, SmolLM2-135M-Instruct) a question
(plain and streamed), asks the real diffusers image server for a picture, asks
the text model again, and asks real all-MiniLM-L6-v2 on vLLM's pooling runner for
embeddings (related sentences must score higher than unrelated ones). The demo's
models.json declares a GPU budget all models fit in, so the manager's /v1/events
stream must show three cold starts and no swap: the text model stays resident beside
the image server and the embeddings model (no model is ever stopped). Then the
text model calls tools through the SDK (named, required, auto, streamed, a tool result
sent back).

With llama.cpp built (tier ``llamacpp``), the demo also offers ``smollm2-gguf``: the same
model's GGUF on the real ``llama-server``. It answers plain and streamed chats, takes the
vLLM model's place (it does not fit beside it in the demo's budget; swapping back would
cost CI another vLLM start), and a SIGKILL of
its server mid-stream is counted as the fault cases count it
(tests/integration/faults/): only the stream under way is lost; chats sent after the
kill are answered once the manager has started it again.

Finally `./setup.sh demo stop` must stop everything, the model servers included.

Markers ``vllm`` and ``diffusers`` (the GGUF test also ``llamacpp``); skips (with the
fix) when the vLLM venv, the model or diffusers is missing, the GGUF test also when the
demo offers no GGUF model (no llama-server built). vLLM starts twice for chat (about 35 s
each on an idle machine) and once for embeddings; the waits below are deadlines, not
expectations.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ARTIFACTS, REPO_ROOT, VllmRuntime, state_dir
from tests.e2e.conftest import free_port_base as port_base
from tests.integration.faults.load import Outcome, classify
from tests.mcp_client import http_session, stdio_session
from wire.procs import is_alive, read_registry

pytestmark = [pytest.mark.vllm, pytest.mark.diffusers]

PORT_BASES = range(18700, 18786)
"""The proxy's port N; the demo also takes N+10 (manager), N+11 to N+16 (models)."""
OFFSETS = (0, 10, 11, 12, 13, 14, 15, 16)
GGUF = "smollm2-gguf"
LOAD_DEADLINE_S = 900.0
QUESTION = "What is the capital of France? Answer in one word."


def free_port_base() -> int:
    """A proxy port N in our range with N, N+10 and N+11 to N+16 all free."""
    return port_base(PORT_BASES, OFFSETS)


@dataclass
class Demo:
    """The running demo, as `./setup.sh demo --detach` left it."""

    dir: Path
    env: dict[str, str]
    proxy_url: str
    manager_url: str
    token: str
    api_key: str = ""
    """The key the demo generated into DIR/api-key (clients need it: keys are on by default)."""

    def setup_sh(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(REPO_ROOT / "setup.sh"), *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def client(self) -> Any:
        """The real openai SDK pointed at the proxy, without its own retries."""
        import openai

        return openai.OpenAI(
            base_url=f"{self.proxy_url}/v1",
            api_key=self.api_key,
            max_retries=0,
            timeout=LOAD_DEADLINE_S,
        )

    def pids(self) -> list[int]:
        """The manager's, the proxy's and every model server's pid the demo recorded."""
        found = []
        with contextlib.suppress(OSError, ValueError):
            data = json.loads((self.dir / "pids.json").read_text())
            found += [data[k]["pid"] for k in ("manager", "proxy")]
        found += [record.pid for record in read_registry(self.dir / "logs").values()]
        return found


class SwapRecorder:
    """Follows the manager's /v1/events (real SSE) in a thread and keeps every swap event
    and every state a model entered. A stream that broke is reported by `wait_for` and
    `following` (an empty record would otherwise read as "nothing happened")."""

    def __init__(self, demo: Demo) -> None:
        self.swaps: list[tuple[str | None, str]] = []
        self.states: list[tuple[str, str]] = []
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._follow, args=(demo,), daemon=True)
        self._thread.start()
        assert self._connected.wait(30), f"no event stream from the manager: {self._error}"

    def _follow(self, demo: Demo) -> None:
        headers = {"Authorization": f"Bearer {demo.token}"}
        timeout = httpx.Timeout(10.0, read=None)
        try:
            with (
                httpx.Client(timeout=timeout) as client,
                client.stream("GET", f"{demo.manager_url}/v1/events", headers=headers) as res,
            ):
                res.raise_for_status()
                event = ""
                for line in res.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith("event:"):
                        event = line.split(":", 1)[1].strip()
                        if event == "snapshot":
                            self._connected.set()
                    elif line.startswith("data:") and event == "swap":
                        data = json.loads(line.split(":", 1)[1])
                        with self.changed:
                            self.swaps.append((data["from"], data["to"]))
                            self.changed.notify_all()
                    elif line.startswith("data:") and event == "state":
                        data = json.loads(line.split(":", 1)[1])
                        with self.changed:
                            self.states.append((data["model"], data["state"]))
                            self.changed.notify_all()
            if not self._stop.is_set():
                raise RuntimeError("the manager closed its event stream")
        except BaseException as exc:  # noqa: BLE001 (reported by the waiting test)
            with self.changed:
                self._error = exc
                self.changed.notify_all()
            self._connected.set()

    def following(self) -> None:
        """Fail the test if the event stream broke (the record then stops short)."""
        assert self._error is None, f"the event stream broke: {self._error!r}"

    def wait_for(self, count: int, deadline: float = 60.0) -> list[tuple[str | None, str]]:
        with self.changed:
            self.changed.wait_for(
                lambda: len(self.swaps) >= count or self._error is not None, timeout=deadline
            )
            self.following()
            return list(self.swaps)

    def wait_until(self, seen: Callable[[list[tuple[str | None, str]]], bool]) -> bool:
        """Whether the swaps recorded come to satisfy `seen` within a minute."""
        with self.changed:
            met = self.changed.wait_for(
                lambda: seen(self.swaps) or self._error is not None, timeout=60.0
            )
            self.following()
            return bool(met) and seen(self.swaps)

    def close(self) -> None:
        self._stop.set()


@pytest.fixture(scope="module")
def demo(vllm_runtime: VllmRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`./setup.sh demo --detach --no-deps` on free ports; `./setup.sh demo stop` at the end."""
    pytest.importorskip(
        "diffusers", reason="diffusers is not installed (pip install -e '.[image]')"
    )
    if vllm_runtime.python != state_dir() / "vllm-venv" / "bin" / "python":
        pytest.skip(
            "setup.sh demo uses the vLLM venv in HOMELAB_STATE_DIR; "
            "HOMELAB_VLLM_PYTHON points elsewhere"
        )
    if not (state_dir() / "models" / "all-minilm-l6-v2" / "config.json").is_file():
        pytest.skip("no embeddings model in HOMELAB_STATE_DIR/models; run ./setup.sh deps")
    demo_dir = tmp_path_factory.mktemp("demo")
    port = free_port_base()
    env = {**os.environ, "HOMELAB_DEMO_DIR": str(demo_dir), "NO_COLOR": "1"}
    env["HOMELAB_STATE_DIR"] = str(state_dir())
    running = Demo(
        dir=demo_dir,
        env=env,
        proxy_url=f"http://127.0.0.1:{port}",
        manager_url=f"http://127.0.0.1:{port + 10}",
        token="",
    )
    started = running.setup_sh("demo", "--detach", "--no-deps", "--port", str(port), timeout=900)
    try:
        assert started.returncode == 0, f"demo --detach failed:\n{started.stdout}\n{started.stderr}"
        assert f"Web UI:           {running.proxy_url}/" in started.stdout
        running.token = (demo_dir / "manager-token").read_text().strip()
        key_file = demo_dir / "api-key"
        running.api_key = key_file.read_text().strip()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert str(key_file) in started.stdout and running.api_key not in started.stdout
        yield running
    finally:
        running.setup_sh("demo", "stop")
        ARTIFACTS.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copytree(demo_dir / "logs", ARTIFACTS / "demo-logs", dirs_exist_ok=True)


def _chat_and_stream(client: Any, ask: dict) -> None:
    """The question, plain and streamed (token by token): both answers name Paris."""
    answer = client.chat.completions.create(**ask).choices[0].message.content or ""
    assert "paris" in answer.lower(), answer
    chunks = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**ask, stream=True)
        if c.choices
    ]
    assert sum(1 for c in chunks if c) > 1, chunks
    assert "paris" in "".join(chunks).lower(), chunks


def _alive(pid: int) -> bool:
    return is_alive(pid)  # a zombie child of ours counts as gone


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5


def _related_sentences_embed_closer(client, demo: Demo) -> None:  # noqa: ANN001 (openai.OpenAI)
    """Real all-MiniLM-L6-v2 on vLLM's pooling runner, through the proxy and the SDK (which
    asks for base64 and decodes it): two sentences about a cat score higher than either
    with one about the stock market; a text model asked for embeddings is refused. The
    MCP tool `embed` says the same of the same sentences."""
    import openai

    cat, kitten, market = (
        "A cat sits on the mat.",
        "A kitten is resting on a rug.",
        "The stock market fell sharply today.",
    )
    answer = client.embeddings.create(model="minilm", input=[cat, kitten, market])
    vectors = [d.embedding for d in sorted(answer.data, key=lambda d: d.index)]
    assert [len(v) for v in vectors] == [384, 384, 384]
    related = _cosine(vectors[0], vectors[1])
    assert related > _cosine(vectors[0], vectors[2]), vectors
    assert related > _cosine(vectors[1], vectors[2]), vectors
    floats = client.embeddings.create(model="minilm", input=cat, encoding_format="float")
    assert _cosine(floats.data[0].embedding, vectors[0]) > 0.999
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="smollm2", input=cat)
    assert refused.value.code == "wrong_model_type" and "minilm" in refused.value.message

    async def embed_tool() -> dict:
        async with http_session(f"{demo.proxy_url}/mcp", demo.api_key) as session:
            result = await session.call_tool("embed", {"input": [cat, kitten, market]})
            assert not result.is_error, result.content
            return result.structured_content or {}

    meta = asyncio.run(embed_tool())
    assert meta["model"] == "minilm" and meta["dimensions"] == 384
    sim = meta["similarity"]
    assert sim[0][1] > sim[0][2] and sim[0][1] > sim[1][2], sim
    assert _cosine(meta["embeddings"][0], vectors[0]) > 0.999


def test_demo_answers_chat_then_draws_then_chats_again_without_a_swap(demo: Demo) -> None:
    from PIL import Image

    # Keys are on by default: without the generated key the proxy refuses.
    assert httpx.get(f"{demo.proxy_url}/v1/models", timeout=30).status_code == 401
    auth = {"Authorization": f"Bearer {demo.api_key}"}
    models = httpx.get(f"{demo.proxy_url}/v1/models", headers=auth, timeout=30).json()
    # The models.json the demo wrote: the CPU settings the issue asks for.
    written = json.loads((demo.dir / "models.json").read_text())
    gguf = {GGUF: "text"} if GGUF in written else {}
    speech = {m: t for m, t in (("whisper", "stt"), ("piper", "tts")) if m in written}
    assert {m["id"]: m["type"] for m in models["data"]} == {
        "smollm2": "text",
        "tiny-sd": "image",
        "minilm": "embedding",
        **gguf,
        **speech,
    }
    assert written["smollm2"]["gpu"] is False and "--enforce-eager" in written["smollm2"]["args"]
    assert written["tiny-sd"]["device"] == "cpu" and written["tiny-sd"]["dtype"] == "fp32"
    # ... and a GPU budget all models fit in together.
    declared = sum(written[m]["gpu_memory_mib"] for m in ("smollm2", "tiny-sd", "minilm", *speech))
    assert declared <= written["$gpu_budget_mib"]

    swaps = SwapRecorder(demo)
    client = demo.client()
    ask = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 20,
        "temperature": 0,
    }
    try:
        _chat_and_stream(client, ask)

        image = client.images.generate(
            model="tiny-sd", prompt="a lighthouse", size="64x64", response_format="b64_json"
        )
        png = base64.b64decode(image.data[0].b64_json or "")
        assert png.startswith(b"\x89PNG")
        assert Image.open(io.BytesIO(png)).size == (64, 64)

        again = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(**ask, stream=True)
            if c.choices
        )
        assert "paris" in again.lower(), again

        _related_sentences_embed_closer(client, demo)

        # Text, image, text, embeddings: three cold starts, no swap, nothing stopped.
        assert swaps.wait_for(3) == [(None, "smollm2"), (None, "tiny-sd"), (None, "minilm")]
        # The record holds every start (it was following all along), and no stop.
        swaps.following()
        ready = {("smollm2", "ready"), ("tiny-sd", "ready"), ("minilm", "ready")}
        assert ready <= set(swaps.states), swaps.states
        assert not [s for s in swaps.states if s[1] in ("stopping", "stopped")], swaps.states
        listed = httpx.get(f"{demo.proxy_url}/v1/models", headers=auth, timeout=30).json()
        states = {m["id"]: m["state"] for m in listed["data"]}
        assert {k: v for k, v in states.items() if k != GGUF and k not in speech} == {
            "smollm2": "ready",
            "tiny-sd": "ready",
            "minilm": "ready",
        }
        # Issue 23's probe, which must fail against the demo: a model port answers only
        # with its upstream key, on every path (vLLM's /invocations is a whole chat).
        for name in ("smollm2", "tiny-sd", "minilm"):
            base = f"http://127.0.0.1:{written[name]['port']}"
            for path in ("/invocations", "/tokenize", "/metrics", "/health", "/v1/models"):
                for method in ("GET", "POST"):
                    answer = httpx.request(method, base + path, json={}, timeout=30)
                    assert answer.status_code == 401, (name, method, path, answer.text[:200])
    finally:
        swaps.close()
        client.close()


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        # vLLM 0.32 holds the arguments to the schema only for a strict tool; without it
        # a 135M model fills `city` with whatever JSON it likes.
        "strict": True,
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def _streamed_call(stream: Any) -> tuple[str, str, str, int, str | None]:
    """(id, name, arguments, argument chunks, finish reason) of the one streamed call."""
    call_id = name = arguments = ""
    pieces, finish = 0, None
    for chunk in stream:
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for delta in chunk.choices[0].delta.tool_calls or []:
            assert delta.index == 0, delta  # one call
            call_id += delta.id or ""
            if delta.function:
                name += delta.function.name or ""
                if delta.function.arguments:
                    arguments += delta.function.arguments
                    pieces += 1
    return call_id, name, arguments, pieces, finish


def test_demo_calls_tools_with_the_openai_sdk(demo: Demo) -> None:
    """The demo's smollm2 calls tools (models.json `tool_calls`: vLLM's `hermes` parser and
    the repo's ChatML template with <tool_call> tags): a named `tool_choice` and "required"
    answer a call with valid JSON arguments, plain and streamed (vLLM's structured output
    holds even a 135M model to the schema); "auto" is accepted (vLLM refuses it without a
    parser) and leaves the choice to the model; the tool's result goes back in the next
    turn and the model answers from it."""

    written = json.loads((demo.dir / "models.json").read_text())
    assert written["smollm2"]["tool_calls"]["parser"] == "hermes"
    auth = {"Authorization": f"Bearer {demo.api_key}"}
    listed = httpx.get(f"{demo.proxy_url}/v1/models", headers=auth, timeout=30).json()
    tools = {m["id"]: m.get("tools") for m in listed["data"]}
    assert tools["smollm2"] is True and tools["tiny-sd"] is None, tools  # text models only
    client = demo.client()
    ask = {
        "model": "smollm2",
        "messages": ASK_WEATHER,
        "tools": [WEATHER],
        "max_tokens": 60,
        "temperature": 0,
    }
    named = {"type": "function", "function": {"name": "get_weather"}}
    try:
        for choice in (named, "required"):
            answer = client.chat.completions.create(**ask, tool_choice=choice).choices[0]
            (call,) = answer.message.tool_calls or []
            assert call.type == "function" and call.function.name == "get_weather", answer
            arguments = json.loads(call.function.arguments)
            assert set(arguments) == {"city"} and isinstance(arguments["city"], str), arguments
            if choice == "required":
                assert answer.finish_reason == "tool_calls", answer

            streamed = client.chat.completions.create(**ask, tool_choice=choice, stream=True)
            call_id, name, text, pieces, finish = _streamed_call(streamed)
            assert call_id and name == "get_weather", (call_id, name)
            assert pieces > 1, text  # the arguments arrive in pieces
            assert set(json.loads(text)) == {"city"}, text
            if choice == "required":
                assert finish == "tool_calls"

        # "auto": accepted, and the model decides (SmolLM2-135M answers in words here).
        auto = client.chat.completions.create(**ask, tool_choice="auto").choices[0]
        for call in auto.message.tool_calls or []:
            json.loads(call.function.arguments)
        assert auto.message.tool_calls or auto.message.content, auto

        # The call, then its result in the next turn: the model answers from it.
        first = client.chat.completions.create(**ask, tool_choice="required").choices[0]
        (call,) = first.message.tool_calls or []
        result = {"city": "Paris", "temperature_c": 21, "sky": "sunny"}
        follow = client.chat.completions.create(
            model="smollm2",
            messages=[
                *ASK_WEATHER,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {
                                "name": call.function.name,
                                "arguments": call.function.arguments,
                            },
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
            ],
            tools=[WEATHER],
            max_tokens=40,
            temperature=0,
        ).choices[0]
        said = (follow.message.content or "").lower()
        assert not follow.message.tool_calls and ("sunny" in said or "21" in said), follow
    finally:
        client.close()


def _wait_idle(demo: Demo, model: str) -> None:
    auth = {"Authorization": f"Bearer {demo.api_key}"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = httpx.get(f"{demo.proxy_url}/v1/models", headers=auth, timeout=30).json()
        entry = next(m for m in listed["data"] if m["id"] == model)
        if entry["in_flight"] == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{model} still has a lease after 30 s: {entry}")


def _use_the_others(client: Any) -> None:
    """A picture from tiny-sd and an embedding from minilm: smollm2 becomes the least
    recently used model, the one a start that needs room stops first."""
    image = client.images.generate(
        model="tiny-sd", prompt="a lighthouse", size="64x64", response_format="b64_json"
    )
    assert base64.b64decode(image.data[0].b64_json or "").startswith(b"\x89PNG")
    assert client.embeddings.create(model="minilm", input="a lighthouse").data


def _stream(client: Any, outcome: Outcome, ask: dict, under_way: threading.Event) -> None:
    """One streamed chat, recorded as the fault stack records it: `ok` only when the stream
    ended with a finish reason; `under_way` is set at its first content delta."""
    import openai

    try:
        finish = None
        for chunk in client.chat.completions.create(**ask, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                if outcome.first_chunk is None:
                    outcome.first_chunk = time.monotonic()
                    under_way.set()
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        outcome.result = "ok" if finish else "stream_cut"
    except openai.APIError as exc:
        outcome.result = classify(exc, outcome)
    finally:
        outcome.ended = time.monotonic()
        under_way.set()


@pytest.mark.llamacpp
def test_demo_serves_the_gguf_model_on_llama_cpp_swaps_it_and_survives_a_kill(
    demo: Demo,
) -> None:
    import openai

    written = json.loads((demo.dir / "models.json").read_text())
    if GGUF not in written:
        pytest.skip(f"the demo offers no {GGUF}: no llama-server (run ./setup.sh deps)")
    entry = written[GGUF]
    assert entry["backend"] == "llama.cpp" and entry["model"].endswith(".gguf")
    # The budget makes the two text models swap: each fits beside the models of the other
    # types (tiny-sd, minilm, the speech models), not beside the other.
    budget = written["$gpu_budget_mib"]
    others = sum(
        spec["gpu_memory_mib"]
        for name, spec in written.items()
        if not name.startswith("$") and spec["type"] != "text"
    )
    assert entry["gpu_memory_mib"] + others <= budget
    assert entry["gpu_memory_mib"] + others + written["smollm2"]["gpu_memory_mib"] > budget

    swaps = SwapRecorder(demo)
    client = demo.client()
    ask = {
        "model": GGUF,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 20,
        "temperature": 0,
    }
    try:
        # smollm2 is resident (the tests above); with the others used last, it makes room.
        _use_the_others(client)
        _chat_and_stream(client, ask)
        assert ("smollm2", GGUF) in swaps.wait_for(1), swaps.swaps
        stopped = {("tiny-sd", "stopped"), ("minilm", "stopped")} & set(swaps.states)
        assert not stopped, swaps.states

        # A kill mid-stream: one long stream under way, its server SIGKILLed, then chats.
        server = read_registry(demo.dir / "logs")[GGUF]
        long_ask = {**ask, "max_tokens": 4000, "extra_body": {"ignore_eos": True}}
        under_way = threading.Event()
        stream = Outcome("stream", GGUF, time.monotonic())
        streamer = threading.Thread(target=_stream, args=(client, stream, long_ask, under_way))
        streamer.start()
        assert under_way.wait(LOAD_DEADLINE_S) and stream.first_chunk is not None, stream
        os.kill(server.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        after: list[Outcome] = []
        for _ in range(2):
            outcome = Outcome("plain", GGUF, time.monotonic())
            try:
                reply = client.chat.completions.create(**ask).choices[0].message.content or ""
                outcome.result = "ok" if "paris" in reply.lower() else "wrong_answer"
            except openai.APIError as exc:
                outcome.result = classify(exc, outcome)
            outcome.ended = time.monotonic()
            after.append(outcome)
        streamer.join(LOAD_DEADLINE_S)
        assert not streamer.is_alive()
        facts = {
            "streams_under_way_lost": int(not stream.ok and stream.sent < killed_at),
            "plain_lost": sum(1 for o in after if not o.ok),
        }
        assert facts == {"streams_under_way_lost": 1, "plain_lost": 0}, (stream, after)
        assert stream.result.startswith(("stream_cut", "http_")), stream
        restarted = read_registry(demo.dir / "logs")[GGUF]
        assert restarted.pid != server.pid  # the manager started a new llama-server

        # And back: the vLLM model takes the room of the GGUF one (the least recently used
        # of the four once the others were used), answering the same question. Its lease
        # lingers in the proxy's pool for a moment after the last chat, and a model with a
        # lease is never stopped: wait until the manager counts it idle.
        _wait_idle(demo, GGUF)
        _use_the_others(client)
        reply = client.chat.completions.create(**{**ask, "model": "smollm2"})
        assert "paris" in (reply.choices[0].message.content or "").lower(), reply
        assert swaps.wait_until(lambda seen: (GGUF, "smollm2") in seen), swaps.swaps
    finally:
        swaps.close()
        client.close()


def test_demo_stop_stops_everything(demo: Demo) -> None:
    pids = demo.pids()
    assert len(pids) >= 3, pids  # manager, proxy and at least the resident model server
    stopped = demo.setup_sh("demo", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    assert [pid for pid in pids if _alive(pid)] == []
    status = demo.setup_sh("demo", "status")
    assert status.returncode == 3 and "not running" in status.stdout


# -- the README's examples, run against the demo ------------------------------------------

DEMO_KEY_FILE = "~/.local/share/homelab-ai/demo/api-key"
"""Where the README tells clients the demo's key is (`$HOMELAB_STATE_DIR/demo/api-key`)."""


def _doc_blocks(doc: str, lang: str, containing: str) -> list[str]:
    """The fenced `lang` blocks of `doc` (a path under the repository) with `containing`."""
    text = (REPO_ROOT / doc).read_text()
    found = [b for b in re.findall(rf"```{lang}\n(.*?)```", text, re.S) if containing in b]
    assert found, f"{doc} has no {lang} block with {containing!r} any more: update this test"
    return found


def _swap(text: str, old: str, new: str) -> str:
    assert old in text, f"the snippet no longer says {old!r}: update this test with it"
    return text.replace(old, new)


def _shell_args(script: str, home: Path, stub: str, also: str = "") -> list[str]:
    """Run a documented shell line with bash, `stub` defined as a function that prints
    `also` (expanded inside it) and its arguments, NUL-separated, in a home whose demo
    key file holds the demo's key."""
    out = subprocess.run(
        ["bash", "-euc", f"{stub}() {{ printf '%s\\0' {also} \"$@\"; }}\n{script}"],
        env={"HOME": str(home), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return out.split("\0")[:-1]


def _tool_names(session_factory: Any, url: str, key: str) -> set[str]:
    """The tools an MCP session (tests/mcp_client.py) to `url` with `key` lists."""

    async def listed() -> set[str]:
        async with session_factory(url, key) as session:
            return {tool.name for tool in (await session.list_tools()).tools}

    return asyncio.run(listed())


@pytest.fixture(scope="module")
def running_demo(demo: Demo) -> Demo:
    """The demo, started again (on ports free now: the last ones may linger in TIME_WAIT)
    when an earlier test of this module stopped it."""
    if demo.setup_sh("demo", "status").returncode != 0:
        port = free_port_base()
        started = demo.setup_sh("demo", "--detach", "--no-deps", "--port", str(port), timeout=900)
        assert started.returncode == 0, f"demo --detach failed:\n{started.stdout}\n{started.stderr}"
        demo.proxy_url = f"http://127.0.0.1:{port}"
        demo.manager_url = f"http://127.0.0.1:{port + 10}"
    return demo


@pytest.fixture
def home_with_demo_key(running_demo: Demo, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    key_file = home / DEMO_KEY_FILE.removeprefix("~/")
    key_file.parent.mkdir(parents=True)
    key_file.write_text(running_demo.api_key + "\n")
    return home


README_SDK_EXAMPLES = {
    "the demo's": ("demo/api-key", []),
    "a server's": (
        "<one of HOMELAB_API_KEYS>",
        [
            ("http://server:8080", "http://127.0.0.1:8080"),
            ('"<one of HOMELAB_API_KEYS>"', "key"),
            ('"llama3-8b"', '"smollm2"'),
            ('"sdxl"', '"tiny-sd"'),
            ('"1024x1024"', '"64x64"'),
        ],
    ),
}
"""The README's openai SDK examples: the text that finds each, and what turns a server's
into the demo's (its models, address and key)."""


@pytest.mark.parametrize("example", list(README_SDK_EXAMPLES))
def test_readme_python_examples_run_against_the_demo_and_their_image_url_is_fetchable(
    running_demo: Demo, example: str
) -> None:
    """The README's openai SDK examples, as written but for the port, the key file's
    folder (and, for a server's, the models): a chat answer, and with
    response_format="url" an absolute image URL that fetches the picture (regression:
    without a public URL the proxy answered a relative `/images/<id>.png`)."""
    marker, swaps = README_SDK_EXAMPLES[example]
    [code] = _doc_blocks("README.md", "python", marker)
    prelude = ""
    for old, new in swaps:
        code = _swap(code, old, new)
    if "key =" not in code:
        prelude = f"key = {running_demo.api_key!r}\n"
    else:
        code = _swap(
            code,
            'Path.home() / ".local/share/homelab-ai/demo/api-key"',
            f"Path({str(running_demo.dir / 'api-key')!r})",
        )
    code = prelude + _swap(code, "http://127.0.0.1:8080", running_demo.proxy_url)
    names: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), names)  # noqa: S102 - the README's own example

    reply, image = names["reply"], names["image"]
    assert reply.choices[0].message.content
    url = image.data[0].url
    assert url.startswith(running_demo.proxy_url + "/images/"), url
    fetched = httpx.get(url, timeout=30)  # no key needed: image URLs work in <img> tags
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    from PIL import Image

    assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)


@pytest.mark.parametrize("doc", ["README.md", "docs/mcp.md"])
def test_documented_claude_mcp_add_line_reaches_the_demo_with_its_key(
    running_demo: Demo, home_with_demo_key: Path, doc: str
) -> None:
    """The `claude mcp add` line for the demo, expanded by bash as a user's shell would
    (a stand-in `claude` prints what it was given): with its URL and header an MCP
    session lists the demo's tools, and without the header the demo refuses (regression:
    the line had no key, and the demo has had one since keys went on by default)."""
    [line] = [b for b in _doc_blocks(doc, "bash", "claude mcp add") if "homelab-demo" in b]
    line = _swap(line, "http://127.0.0.1:8080", running_demo.proxy_url)
    args = _shell_args(line, home_with_demo_key, "claude")
    assert args[:5] == ["mcp", "add", "--transport", "http", "homelab-demo"], args
    url, flag, header = args[5:]
    assert url == running_demo.proxy_url + "/mcp" and flag == "--header", args
    name, _, value = header.partition(": ")
    assert (name, value) == ("Authorization", f"Bearer {running_demo.api_key}")

    assert httpx.post(url, json={}, timeout=30).status_code == 401  # no key, no MCP
    key = value.removeprefix("Bearer ")
    assert "txt2img" in _tool_names(http_session, url, key)


def test_readme_stdio_relay_line_passes_the_demo_key(
    running_demo: Demo, home_with_demo_key: Path
) -> None:
    """The README's `python -m proxy.mcp` line, expanded by bash, hands the relay the
    demo's key and URL; the relay run with them lists the demo's tools."""
    text = (REPO_ROOT / "README.md").read_text()
    [line] = re.findall(r"`(HOMELAB_MCP_KEY=[^`]*python -m proxy\.mcp [^`]*)`", text)
    line = _swap(line, "http://127.0.0.1:8080", running_demo.proxy_url)
    args = _shell_args(line, home_with_demo_key, "python", also='"$HOMELAB_MCP_KEY"')
    url = running_demo.proxy_url + "/mcp"
    assert args == [running_demo.api_key, "-m", "proxy.mcp", "--url", url], args
    assert "txt2img" in _tool_names(stdio_session, url, args[0])  # the relay, run so


def test_docs_mcp_python_example_calls_a_tool_on_the_demo(running_demo: Demo) -> None:
    """docs/mcp.md's Python (mcp SDK) example, with the demo's address and key: it asks
    txt2txt and prints the answer (after any progress lines)."""
    [code] = _doc_blocks("docs/mcp.md", "python", "streamable_http_client")
    code = _swap(code, "http://homelab:8080", running_demo.proxy_url)
    code = _swap(code, '"Bearer KEY"', f"'Bearer ' + {running_demo.api_key!r}")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "docs/mcp.md", "exec"), {"__name__": "mcp_example"})  # noqa: S102
    lines = printed.getvalue().strip().splitlines()
    assert lines and lines[-1].strip(), printed.getvalue()
    # A failed call's text names where it failed: "... (from the proxy)" and the like.
    assert "(from the " not in lines[-1], lines


@pytest.mark.speech
def test_readme_speech_example_speaks_and_hears_on_the_demo(
    running_demo: Demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # noqa: ANN001 (capsys)
    """The README's speech snippet, as written, against the demo's `piper` and `whisper`:
    the spoken file is MP3, and Whisper hears the words that were spoken."""
    written = json.loads((running_demo.dir / "models.json").read_text())
    if not {"whisper", "piper"} <= set(written):
        pytest.skip("the demo offers no speech models: run ./setup.sh deps")
    assert (written["whisper"]["type"], written["piper"]["type"]) == ("stt", "tts")
    [code] = _doc_blocks("README.md", "python", "client.audio.speech.create")
    monkeypatch.chdir(tmp_path)
    exec(  # noqa: S102 - the README's own example
        compile(code, "README.md", "exec"),
        {"__name__": "readme_speech", "client": running_demo.client()},
    )
    assert (tmp_path / "hello.mp3").read_bytes()[:3] in (b"ID3", b"\xff\xfb", b"\xff\xf3")
    heard = capsys.readouterr().out.lower()
    assert "hello" in heard and "lab" in heard, heard
