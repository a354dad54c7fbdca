"""The proxy's audio routes (unit tier): the real proxy app in front of the fake manager
and the real audio server app with fake models (tests/unit/audioserver): routing by
type, the upload checks before a lease, streams passed on, voices, and key scoping."""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from proxy_fakes import TOKEN, FakeManager, serve_asgi
from proxy_stack import stack_settings

from proxy.app import create_app
from proxy.keyfile import KeyEntry, KeyFileData, save
from proxy.keys import digest

pytest.importorskip("faster_whisper", reason="the audio server's stack (pip install -e '.[audio]')")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "audioserver"))
from audioserver_fakes import FakeSpeaker, FakeTranscriber, loader_for, settings, wav  # noqa: E402

from audioserver.api import create_app as audio_app  # noqa: E402

MODELS = {
    "chat": {"type": "text"},
    "ears": {"type": "stt"},
    "voice": {"type": "tts"},
}
SPEECH_PATHS = ("/v1/audio/speech", "/v1/audio/voices")
KEY_A = "ka-" + secrets.token_urlsafe(24)
KEY_B = "kb-" + secrets.token_urlsafe(24)


class BothAudioServers:
    """One ASGI app in front of an stt and a tts audio server (the fake manager hands out
    one address for every model): speech paths go to the tts one, the rest to stt."""

    def __init__(self, stt: Any, tts: Any) -> None:
        self.stt, self.tts = stt, tts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            async with (
                self.stt.router.lifespan_context(self.stt),
                self.tts.router.lifespan_context(self.tts),
            ):
                await send({"type": "lifespan.startup.complete"})
                await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        app = self.tts if scope.get("path") in SPEECH_PATHS else self.stt
        await app(scope, receive, send)


@contextlib.asynccontextmanager
async def audio_stack(
    tmp_path: Path, speaker: FakeSpeaker, *, hosts: int = 1, **overrides: Any
) -> AsyncIterator[Any]:
    """`hosts=2`: two managers behind the proxy (docs/hosts.md), the first serving the text
    model, the second (host ``h2``, in the proxy's catalogue) the speech models."""
    hearer = FakeTranscriber()
    both = BothAudioServers(
        audio_app(settings("stt", served_name="ears"), loader_for(hearer)),
        audio_app(settings("tts", served_name="voice"), loader_for(speaker)),
    )
    async with contextlib.AsyncExitStack() as stack:
        audio_url = await stack.enter_async_context(serve_asgi(both))
        speech = {k: v for k, v in MODELS.items() if v["type"] != "text"}
        manager = FakeManager(MODELS if hosts == 1 else {"chat": MODELS["chat"]}, audio_url)
        manager_url = await stack.enter_async_context(serve_asgi(manager.app))
        if hosts == 2:
            second = FakeManager(speech, audio_url)
            second_url = await stack.enter_async_context(serve_asgi(second.app))
            (tmp_path / "h2.token").write_text(TOKEN + "\n")
            (tmp_path / "h2.token").chmod(0o600)
            catalogue = tmp_path / "catalogue.json"
            entry = {"url": second_url, "token_file": "h2.token"}
            catalogue.write_text(json.dumps({"hosts": {"h1": {}, "h2": entry}}))
            overrides["catalogue"] = catalogue
        values = {"manager_url": manager_url, "max_upload_bytes": 48 * 1024, **overrides}
        proxy = stack_settings(tmp_path, **values)
        app = create_app(proxy)
        async with serve_asgi(app) as url:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                client.manager = manager  # type: ignore[attr-defined]
                client.hearer = hearer  # type: ignore[attr-defined]
                yield client


def upload(data: bytes, model: str = "ears", **fields: str) -> dict:
    return {"files": {"file": ("a.wav", data, "audio/wav")}, "data": {"model": model, **fields}}


def error_of(answer: httpx.Response, status: int, code: str) -> dict:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    return error


async def test_a_transcription_is_routed_to_the_stt_model_and_comes_back(tmp_path: Path) -> None:
    async with audio_stack(tmp_path, FakeSpeaker()) as client:
        answer = await client.post("/v1/audio/transcriptions", **upload(wav(1.0), prompt="names"))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"text": "Hello there. General Kenobi."}
        assert answer.headers["x-homelab-served-by"].startswith("ears@")
        assert client.hearer.jobs[-1].prompt == "names"  # the form reached it as sent
        text = await client.post("/v1/audio/translations", **upload(wav(), response_format="text"))
        assert text.text == "Hello there. General Kenobi.\n"


async def test_a_streamed_transcription_passes_its_events_on(tmp_path: Path) -> None:
    async with audio_stack(tmp_path, FakeSpeaker()) as client:
        answer = await client.post("/v1/audio/transcriptions", **upload(wav(1.0), stream="true"))
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(block[6:]) for block in answer.text.split("\n\n") if block]
        assert [e["type"] for e in events] == [
            "transcript.text.delta",
            "transcript.text.delta",
            "transcript.text.done",
        ]
        assert events[1]["segment"]["end"] / events[1]["duration"] == 1.0


async def test_speech_is_streamed_through_with_its_type_and_rate(tmp_path: Path) -> None:
    speaker = FakeSpeaker()
    speaker.gate = threading.Event()
    async with audio_stack(tmp_path, speaker) as client:
        body = {
            "model": "voice",
            "input": "One. Two. Three.",
            "voice": "alloy",
            "response_format": "pcm",
        }
        async with client.stream("POST", "/v1/audio/speech", json=body) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"] == "audio/pcm"
            assert answer.headers["x-sample-rate"] == "22050"
            chunks = answer.aiter_raw()
            first = await chunks.__anext__()
            # The first sentence came through the proxy while the rest is not yet spoken.
            assert first and speaker.spoken == 1
            speaker.gate.set()
            rest = b"".join([c async for c in chunks])
        assert len(first + rest) == 3 * 2 * int(22050 * 0.1)


async def test_speech_models_of_a_second_host_are_placed_there_like_the_others(
    tmp_path: Path,
) -> None:
    async with audio_stack(tmp_path, FakeSpeaker(), hosts=2) as client:
        listed = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
        assert listed["ears"]["hosts"] == ["h2"] and listed["chat"]["hosts"] == ["h1"]
        heard = await client.post("/v1/audio/transcriptions", **upload(wav(1.0)))
        assert heard.status_code == 200, heard.text
        assert heard.headers["x-homelab-served-by"] == "ears@h2"
        body = {"model": "voice", "input": "One.", "response_format": "wav"}
        spoken = await client.post("/v1/audio/speech", json=body)
        assert spoken.status_code == 200, spoken.text
        assert spoken.headers["x-homelab-served-by"] == "voice@h2"
        assert client.manager.granted == 0  # the first host was never asked for them


async def test_voices_need_a_tts_model_named(tmp_path: Path) -> None:
    async with audio_stack(tmp_path, FakeSpeaker()) as client:
        voices = await client.get("/v1/audio/voices", params={"model": "voice"})
        assert voices.status_code == 200, voices.text
        assert voices.json()["data"][0]["id"] == "fake-voice"
        missing = error_of(await client.get("/v1/audio/voices"), 400, "invalid_request")
        assert "voice" in missing["message"]  # the tts models are named
        wrong = error_of(
            await client.get("/v1/audio/voices", params={"model": "ears"}), 400, "wrong_model_type"
        )
        assert "stt" in wrong["message"] and "voice" in wrong["message"]


@pytest.mark.parametrize(
    ("path", "kwargs", "code"),
    [
        ("/v1/audio/transcriptions", upload(wav(), model="voice"), "wrong_model_type"),
        ("/v1/audio/translations", upload(wav(), model="chat"), "wrong_model_type"),
        ("/v1/audio/speech", {"json": {"model": "ears", "input": "hi"}}, "wrong_model_type"),
        ("/v1/chat/completions", {"json": {"model": "voice", "messages": []}}, "wrong_model_type"),
        (
            "/v1/audio/transcriptions",
            upload(b"%PDF-1.7 not audio at all"),
            "unsupported_audio_format",
        ),
        ("/v1/audio/transcriptions", upload(wav(), response_format="xml"), "invalid_request"),
        ("/v1/audio/transcriptions", upload(wav(), model="nobody"), "model_not_found"),
        (
            "/v1/audio/transcriptions",
            {"data": {"model": "ears"}, "files": {"x": ("a", b"RIFF")}},
            "invalid_request",
        ),
        ("/v1/audio/transcriptions", upload(wav(2.0)), "request_too_large"),
    ],
)
async def test_bad_audio_requests_are_refused_before_any_lease(
    tmp_path: Path, path: str, kwargs: dict, code: str
) -> None:
    async with audio_stack(tmp_path, FakeSpeaker()) as client:
        answer = await client.post(path, **kwargs)
        assert answer.status_code in (400, 404, 413, 415), answer.text
        error = answer.json()["error"]
        assert error["code"] == code and error["source"] == "proxy"
        if code == "wrong_model_type":
            assert "/v1/audio/" in error["message"] or "chat" in error["message"]
        assert client.manager.granted == 0


async def test_a_key_uses_only_its_own_audio_models(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    save(
        path,
        KeyFileData(
            keys=[
                KeyEntry(name="alice", sha256=digest(KEY_A).hex(), models=["voice"]),
                KeyEntry(name="root", sha256=digest(KEY_B).hex(), admin=True),
            ]
        ),
    )
    async with audio_stack(tmp_path, FakeSpeaker(), api_keys=None, key_file=path) as client:
        alice = {"Authorization": f"Bearer {KEY_A}"}
        hidden = await client.post("/v1/audio/transcriptions", headers=alice, **upload(wav()))
        assert error_of(hidden, 404, "model_not_found")["message"].endswith("Known models: voice")
        voices = await client.get("/v1/audio/voices", params={"model": "ears"}, headers=alice)
        error_of(voices, 404, "model_not_found")
        mine = await client.get("/v1/audio/voices", params={"model": "voice"}, headers=alice)
        assert mine.status_code == 200
        root = {"Authorization": f"Bearer {KEY_B}"}
        assert (
            await client.post("/v1/audio/transcriptions", headers=root, **upload(wav()))
        ).status_code == 200
        nobody = await client.get("/v1/audio/voices", params={"model": "voice"})
        error_of(nobody, 401, "invalid_api_key")
