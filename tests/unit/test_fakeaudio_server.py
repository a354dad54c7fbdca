"""The stand-in audio server (tests/fixtures/fakeaudio) keeps to the audio server's
protocol (issue 24's contract): the tests that use it in place of the real one are only
as good as this. Its answers are compared with the real server's request by request in
tests/unit/audioserver/test_fakeaudio_contract.py; here, what it does with its words."""

from __future__ import annotations

import io
import json
import threading
import wave
from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures.fakeaudio.server import Config, FakeAudio, speech_parts, wav_header

KEY = "fake-audio-key"
TEXT = "One sentence. Two sentences!"


@pytest.fixture
def servers() -> Iterator[dict[str, httpx.Client]]:
    started = []
    clients = {}
    for kind in ("stt", "tts"):
        server = FakeAudio(Config(kind, f"fake-{kind}", "127.0.0.1", 0, 0.0, KEY))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        started.append((server, thread))
        clients[kind] = httpx.Client(
            base_url=f"http://127.0.0.1:{server.server_address[1]}",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        )
    try:
        yield clients
    finally:
        for client in clients.values():
            client.close()
        for server, thread in started:
            server.shutdown()
            server.server_close()
            thread.join()


def _spoken(text: str) -> bytes:
    parts = speech_parts(text, 1.0)
    return wav_header(text, sum(map(len, parts))) + b"".join(parts)


def _envelope(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code", "source"}
    return error


def test_health_is_open_and_everything_else_needs_the_key(
    servers: dict[str, httpx.Client],
) -> None:
    for kind, client in servers.items():
        health = httpx.get(f"{client.base_url}/health")
        assert health.json() == {
            "status": "ready",
            "error": None,
            "model": f"fake-{kind}",
            "type": kind,
        }
        refused = httpx.get(f"{client.base_url}/v1/models")
        assert _envelope(refused, 401)["code"] == "invalid_api_key"
        assert refused.headers["www-authenticate"] == "Bearer"


def test_transcription_in_every_format_and_as_a_stream(servers: dict[str, httpx.Client]) -> None:
    stt = servers["stt"]
    files = {"file": ("a.wav", _spoken(TEXT))}
    assert stt.post("/v1/audio/transcriptions", files=files, data={"model": "fake-stt"}).json() == {
        "text": "One sentence. Two sentences!"
    }
    verbose = stt.post(
        "/v1/audio/transcriptions", files=files, data={"response_format": "verbose_json"}
    ).json()
    assert [s["text"] for s in verbose["segments"]] == ["One sentence.", "Two sentences!"]
    srt = stt.post("/v1/audio/translations", files=files, data={"response_format": "srt"}).text
    assert srt.startswith("1\n00:00:00,000 --> ")
    assert stt.post(
        "/v1/audio/transcriptions", files=files, data={"response_format": "vtt"}
    ).text.startswith("WEBVTT")
    with stt.stream(
        "POST", "/v1/audio/transcriptions", files=files, data={"stream": "true"}
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in resp.iter_lines() if line.startswith("data:")]
    deltas, done = events[:-1], events[-1]
    assert [e["type"] for e in deltas] == ["transcript.text.delta"] * 2
    assert deltas[-1]["segment"]["end"] == pytest.approx(deltas[-1]["duration"])
    assert set(deltas[0]["segment"]) == {"id", "start", "end"}
    assert done == {"type": "transcript.text.done", "text": TEXT}
    other = stt.post("/v1/audio/transcriptions", files={"file": ("x.wav", b"\0" * 64)})
    assert _envelope(other, 415)["param"] == "file"
    no_file = stt.post("/v1/audio/transcriptions", files={"model": (None, "x")})
    assert _envelope(no_file, 400)["param"] == "file"
    assert _envelope(stt.post("/v1/audio/transcriptions", data={"model": "x"}), 400)


def test_speech_streams_wav_and_pcm_and_lists_voices(servers: dict[str, httpx.Client]) -> None:
    tts = servers["tts"]
    voices = tts.get("/v1/audio/voices").json()
    assert voices["object"] == "list"
    assert {"id", "name", "language", "sample_rate"} <= set(voices["data"][0])
    wav = tts.post(
        "/v1/audio/speech", json={"model": "fake-tts", "input": TEXT, "response_format": "wav"}
    )
    assert wav.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(wav.content)) as w:
        assert w.getnchannels() == 1 and w.getnframes() > 0
    pcm = tts.post("/v1/audio/speech", json={"input": TEXT, "response_format": "pcm"})
    assert pcm.headers["x-sample-rate"] == "16000" and len(pcm.content) % 2 == 0
    assert tts.post("/v1/audio/speech", json={"input": TEXT}).content[:3] == b"ID3"  # mp3
    assert _envelope(tts.post("/v1/audio/speech", json={"input": ""}), 400)["param"] == "input"
    bad = tts.post("/v1/audio/speech", json={"input": "x", "response_format": "ogg"})
    assert _envelope(bad, 400)["param"] == "response_format"
    assert _envelope(tts.post("/v1/audio/speech", content=b"x"), 400)
