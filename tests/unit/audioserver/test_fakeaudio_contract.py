"""The stand-in audio server (tests/fixtures/fakeaudio) answers as the real one does: the
same requests, sent to the real app (over fake models) and to the stand-in, get the same
statuses, error codes and params, media types, ``X-Sample-Rate``, JSON keys, event types
and audio containers (by their first bytes). The proxy's, the manager's and the UI's
tests that run the stand-in in place of the real server are only as good as this."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from audioserver_fakes import KEY, FakeSpeaker, FakeTranscriber, loader_for, serve, settings
from audioserver_fakes import wav as tone_wav

from tests.fixtures.fakeaudio.server import Config, FakeAudio
from wire.audio import SNIFF_BYTES, sniff_audio

AUTH = {"Authorization": f"Bearer {KEY}"}


def _upload(**fields: str) -> dict[str, Any]:
    return {"files": {"file": ("a.wav", tone_wav(1.0), "audio/wav")}, "data": fields}


STT: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/health", {}),
    ("GET", "/v1/models", {}),
    ("GET", "/v1/progress", {}),
    ("POST", "/v1/audio/transcriptions", _upload(model="m")),
    ("POST", "/v1/audio/transcriptions", _upload(response_format="verbose_json")),
    ("POST", "/v1/audio/transcriptions", _upload(response_format="text")),
    ("POST", "/v1/audio/transcriptions", _upload(response_format="srt")),
    ("POST", "/v1/audio/translations", _upload(response_format="vtt")),
    ("POST", "/v1/audio/transcriptions", _upload(stream="true")),
    ("POST", "/v1/audio/transcriptions", _upload(response_format="xml")),
    ("POST", "/v1/audio/transcriptions", _upload(temperature="3")),
    ("POST", "/v1/audio/transcriptions", {"files": {"file": ("x.wav", b"\0" * 64)}}),
    ("POST", "/v1/audio/transcriptions", {"files": {"file": ("x.png", b"\x89PNG\r\n" * 9)}}),
    ("POST", "/v1/audio/speech", {"json": {"input": "Hello."}}),
    ("GET", "/v1/audio/voices", {}),
]
TTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/health", {}),
    ("GET", "/v1/models", {}),
    ("GET", "/v1/audio/voices", {}),
    *(
        ("POST", "/v1/audio/speech", {"json": {"input": "One. Two.", "response_format": fmt}})
        for fmt in ("mp3", "opus", "aac", "flac", "wav", "pcm")
    ),
    ("POST", "/v1/audio/speech", {"json": {"input": "One.", "voice": "alloy"}}),
    ("POST", "/v1/audio/speech", {"json": {"input": "One.", "voice": "nobody"}}),
    ("POST", "/v1/audio/speech", {"json": {"input": ""}}),
    ("POST", "/v1/audio/speech", {"json": {"input": "hi", "speed": 9}}),
    ("POST", "/v1/audio/speech", {"json": {"input": "hi", "response_format": "ogg"}}),
    ("POST", "/v1/audio/transcriptions", _upload()),
]


def shape(answer: httpx.Response) -> dict[str, Any]:
    """What a client of the audio server relies on in one answer."""
    media = answer.headers.get("content-type", "").partition(";")[0]
    out: dict[str, Any] = {"status": answer.status_code, "media": media}
    if answer.status_code >= 400:
        error = answer.json()["error"]
        out["error"] = (sorted(error), error["code"], error["param"], error["source"])
        return out
    if media == "application/json":
        body = answer.json()
        out["keys"] = sorted(body)
        rows = body.get("data") or body.get("segments")
        if isinstance(rows, list) and rows:
            out["row_keys"] = sorted(rows[0])
    elif media == "text/event-stream":
        events = [
            json.loads(line[5:]) for line in answer.text.splitlines() if line.startswith("data:")
        ]
        out["events"] = [(e["type"], sorted(e), sorted(e.get("segment") or {})) for e in events]
        out["events"] = [out["events"][0], out["events"][-1]]  # first delta, done
    elif media.startswith("audio/"):
        out["rate_header"] = "x-sample-rate" in answer.headers
        head = answer.content[:SNIFF_BYTES]
        out["container"] = sniff_audio(head)
        if out["container"] == "wav":
            out["open_sizes"] = (head[4:8], answer.content.find(b"data") > 0)
    return out


@pytest.fixture
def stand_ins() -> Iterator[dict[str, str]]:
    servers, urls = [], {}
    for kind in ("stt", "tts"):
        server = FakeAudio(Config(kind, f"fake-{kind}", "127.0.0.1", 0, 0.0, KEY))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        servers.append((server, thread))
        urls[kind] = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield urls
    finally:
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join()


@pytest.mark.parametrize("kind", ["stt", "tts"])
async def test_the_stand_in_answers_every_request_as_the_real_server_does(
    kind: str, stand_ins: dict[str, str]
) -> None:
    model = FakeTranscriber() if kind == "stt" else FakeSpeaker(rate=16000)
    requests = STT if kind == "stt" else TTS
    real_app = serve(settings(kind, api_key=KEY), loader_for(model))
    async with real_app as real, httpx.AsyncClient(base_url=stand_ins[kind]) as fake:
        for _ in range(2000):
            if (await real.get("/health")).json()["status"] == "ready":
                break
        differ = []
        for method, path, kwargs in requests:
            want = shape(await real.request(method, path, headers=AUTH, **kwargs))
            got = shape(await fake.request(method, path, headers=AUTH, **kwargs))
            if want != got:
                differ.append(f"{method} {path} {kwargs.get('data') or kwargs.get('json')}:")
                differ.append(f"  real:     {want}\n  stand-in: {got}")
            assert want["status"] < 500, (path, want)
        keyless = [(await c.get("/v1/models")) for c in (real, fake)]
        assert shape(keyless[0]) == shape(keyless[1])
        assert keyless[1].headers["www-authenticate"] == "Bearer"
    assert not differ, "\n".join(differ)
