"""Speech through the real programs (issue 24): transcription jobs (JSON-RPC with progress
by segment, and a batch of an uploaded file through the openai SDK), the MCP tools
speech2txt and txt2speech through the real `mcp` client (HTTP and the stdio relay), and
the generated-audio links.

The stack is the browser tests' `run_stack`: the real manager (process runtime) and
proxies on loopback; the stt and tts models are tests/fixtures/fakeaudio processes the
manager starts like any model server (it speaks the audio server's protocol; the speech
it makes carries its text, so transcribing it gives the words back). The real models
(faster-whisper, Piper) are in the e2e tier.
"""

from __future__ import annotations

import base64
import io
import json
import time
import wave
from collections.abc import Iterator

import httpx
import openai
import pytest
from mcp import types

from tests.e2e.browser.uistack import API_KEY, Stack, audio_entry, fake_entry, run_stack
from tests.fixtures.fakeaudio.server import speech_parts, wav_header
from tests.mcp_client import Recorder, http_session, links, stdio_session, text_of

TEXT = "The lighthouse keeper waved. The ship turned back to the harbour!"


def spoken(text: str) -> bytes:
    parts = speech_parts(text, 1.0)
    return wav_header(text, sum(map(len, parts))) + b"".join(parts)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    models = {
        "chat": fake_entry("text"),
        "hear": audio_entry("stt", env={"FAKEAUDIO_SEGMENT_DELAY": "0.05"}),
        "say": audio_entry("tts"),
    }
    with run_stack(tmp_path_factory.mktemp("speech"), models, "chat", name="speech") as stack:
        yield stack


def _client(stack: Stack) -> httpx.Client:
    return httpx.Client(
        base_url=stack.auth_proxy_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
    )


def _events(client: httpx.Client, path: str) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    event = "message"
    with client.stream("GET", path.lstrip("/")) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                out.append((event, json.loads(line[5:])))
                if event == "end":
                    break
    return out


def test_a_transcription_job_streams_its_segments(speech: Stack) -> None:
    audio = "data:audio/wav;base64," + base64.b64encode(spoken(TEXT)).decode()
    with _client(speech) as client:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "create_transcription",
            "params": {"model": "hear", "file": audio, "language": "en"},
        }
        accepted = client.post("rpc", json=body).json()["result"]
        events = _events(client, accepted["stream"])
    progress = [d["progress"] for e, d in events if e == "progress"]
    assert progress and progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    result = next(d for e, d in events if e == "result")
    assert result["text"] == TEXT and len(result["segments"]) == 2
    assert events[-1] == ("end", {"state": "SUCCESS"})


def test_a_batch_transcribes_an_uploaded_recording(speech: Stack, tmp_path) -> None:  # noqa: ANN001
    sdk = openai.OpenAI(base_url=speech.auth_proxy_url + "v1", api_key=API_KEY)
    recording = tmp_path / "talk.wav"
    recording.write_bytes(spoken("Meet me at noon."))
    uploaded = sdk.files.create(file=recording.open("rb"), purpose="user_data")
    line = {
        "custom_id": "talk",
        "method": "POST",
        "url": "/v1/audio/transcriptions",
        "body": {"model": "hear", "file": uploaded.id},
    }
    batch_input = tmp_path / "batch.jsonl"
    batch_input.write_text(json.dumps(line) + "\n")
    batch_file = sdk.files.create(file=batch_input.open("rb"), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=batch_file.id,
        endpoint="/v1/audio/transcriptions",  # type: ignore[arg-type]
        completion_window="24h",
    )
    deadline = time.monotonic() + 120  # a deadline, not a timing assertion
    while batch.status not in ("completed", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = sdk.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id
    (row,) = [json.loads(x) for x in sdk.files.content(batch.output_file_id).text.splitlines()]
    assert row["custom_id"] == "talk" and row["response"]["body"]["text"] == "Meet me at noon."


async def test_mcp_speaks_and_hears_through_http_and_stdio(speech: Stack) -> None:
    url = speech.auth_proxy_url + "mcp"
    said_progress = Recorder()
    async with http_session(url, API_KEY) as session:
        said = await session.call_tool(
            "txt2speech", {"input": TEXT, "model": "say"}, progress_callback=said_progress
        )
        assert not said.is_error, text_of(said)
        (clip,) = [c for c in said.content if isinstance(c, types.AudioContent)]
        with wave.open(io.BytesIO(base64.b64decode(clip.data))) as w:
            assert w.getnframes() > 0
        (link,) = links(said)
        assert any("loading say" in m or "say is speaking" in m for m in said_progress.messages)
    async with httpx.AsyncClient() as http:
        assert (await http.get(link)).status_code == 401
        mine = await http.get(link, headers={"Authorization": f"Bearer {API_KEY}"})
        assert mine.status_code == 200 and mine.headers["content-type"] == "audio/wav"
    heard_progress = Recorder()
    async with stdio_session(url, API_KEY) as session:
        heard = await session.call_tool(
            "speech2txt", {"audio": link}, progress_callback=heard_progress
        )
        assert not heard.is_error, text_of(heard)
        assert text_of(heard) == TEXT
        assert heard_progress.rising()
        assert any("transcribing" in m for m in heard_progress.messages)
        refused = await session.call_tool("speech2txt", {"audio": "http://192.0.2.1/a.wav"})
        assert refused.is_error and "fetches nothing" in text_of(refused)
