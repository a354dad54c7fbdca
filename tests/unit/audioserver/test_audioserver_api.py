"""The audio server's HTTP contract over fake models: health, the upstream key, the
transcription formats and event stream, the speech stream, the error envelopes."""

from __future__ import annotations

import asyncio
import io
import json
import threading

import av
import httpx
import pytest
from audioserver_fakes import (
    KEY,
    FakeSpeaker,
    FakeTranscriber,
    loader_for,
    serve,
    serve_http,
    settings,
    wait_ready,
    wav,
)

from audioserver.api import create_app

AUTH = {"Authorization": f"Bearer {KEY}"}


def assert_envelope(response: httpx.Response, status: int, code: str, param: object = ...) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code", "source"}
    assert error["source"] == "model_server" and error["code"] == code and error["message"]
    if param is not ...:
        assert error["param"] == param
    return error


def upload(data: bytes, **fields: str) -> dict:
    return {"files": {"file": ("speech.wav", data, "audio/wav")}, "data": {"model": "x", **fields}}


async def test_health_is_open_and_says_loading_then_ready_with_the_type() -> None:
    gate = threading.Event()
    async with serve(settings(api_key=KEY), loader_for(FakeTranscriber(), gate)) as client:
        first = await client.get("/health")
        assert first.status_code == 200
        assert first.json() == {
            "status": "loading",
            "error": None,
            "model": "fake-stt",
            "type": "stt",
        }
        refused = await client.post("/v1/audio/transcriptions", headers=AUTH, **upload(wav()))
        assert_envelope(refused, 503, "model_loading")
        assert refused.headers["Retry-After"]
        gate.set()
        assert (await wait_ready(client))["status"] == "ready"


async def test_every_other_path_needs_the_upstream_key() -> None:
    async with serve(settings(api_key=KEY), loader_for(FakeTranscriber())) as client:
        await wait_ready(client)
        for method, path in (
            ("GET", "/v1/models"),
            ("POST", "/v1/audio/transcriptions"),
            ("GET", "/docs"),
            ("GET", "/nope"),
        ):
            answer = await client.request(method, path)
            assert_envelope(answer, 401, "invalid_api_key")
        wrong = await client.get("/v1/models", headers={"Authorization": "Bearer other"})
        assert_envelope(wrong, 401, "invalid_api_key")
        models = await client.get("/v1/models", headers=AUTH)
        assert models.json()["data"][0]["type"] == "stt"


async def test_a_failed_load_is_503_with_its_reason() -> None:
    def broken(_settings: object) -> object:
        raise RuntimeError("no such model file")

    async with serve(settings(), broken) as client:
        body = await wait_ready(client)
        assert body["status"] == "failed" and "no such model file" in body["error"]
        assert (await client.get("/health")).status_code == 503
        answer = await client.post("/v1/audio/transcriptions", **upload(wav()))
        assert_envelope(answer, 503, "model_load_failed")


async def test_transcriptions_in_every_format() -> None:
    model = FakeTranscriber()
    async with serve(settings(), loader_for(model)) as client:
        await wait_ready(client)
        plain = await client.post("/v1/audio/transcriptions", **upload(wav(1.0)))
        assert plain.json() == {"text": "Hello there. General Kenobi."}
        text = await client.post(
            "/v1/audio/transcriptions", **upload(wav(1.0), response_format="text")
        )
        assert text.text == "Hello there. General Kenobi.\n"
        assert text.headers["content-type"].startswith("text/plain")
        srt = await client.post(
            "/v1/audio/transcriptions", **upload(wav(1.0), response_format="srt")
        )
        assert srt.text == (
            "1\n00:00:00,000 --> 00:00:00,500\nHello there.\n\n"
            "2\n00:00:00,500 --> 00:00:01,000\nGeneral Kenobi.\n"
        )
        vtt = await client.post(
            "/v1/audio/transcriptions", **upload(wav(1.0), response_format="vtt")
        )
        assert vtt.text.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.500\nHello there.\n")
        verbose = await client.post(
            "/v1/audio/translations", **upload(wav(1.0), response_format="verbose_json", prompt="p")
        )
        body = verbose.json()
        assert body["task"] == "translate" and body["duration"] == 1.0
        assert [s["text"] for s in body["segments"]] == [" Hello there.", " General Kenobi."]
        assert model.jobs[-1].task == "translate" and model.jobs[-1].prompt == "p"
        await client.post(
            "/v1/audio/transcriptions", **upload(wav(), language="de", temperature="0.2")
        )
        assert (model.jobs[-1].language, model.jobs[-1].temperature) == ("de", 0.2)


async def test_a_streamed_transcription_sends_one_event_per_segment_then_done() -> None:
    async with serve(settings(), loader_for(FakeTranscriber())) as client:
        await wait_ready(client)
        answer = await client.post("/v1/audio/transcriptions", **upload(wav(1.0), stream="true"))
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in answer.text.split("\n\n") if line]
        assert events == [
            {
                "type": "transcript.text.delta",
                "delta": " Hello there.",
                "segment": {"id": 0, "start": 0.0, "end": 0.5},
                "duration": 1.0,
            },
            {
                "type": "transcript.text.delta",
                "delta": " General Kenobi.",
                "segment": {"id": 1, "start": 0.5, "end": 1.0},
                "duration": 1.0,
            },
            {"type": "transcript.text.done", "text": "Hello there. General Kenobi."},
        ]


async def test_a_stream_that_breaks_ends_with_an_error_event() -> None:
    model = FakeTranscriber()
    model.fail_after = 1
    async with serve(settings(), loader_for(model)) as client:
        await wait_ready(client)
        answer = await client.post("/v1/audio/transcriptions", **upload(wav(1.0), stream="true"))
        events = [json.loads(line[6:]) for line in answer.text.split("\n\n") if line]
        assert events[0]["type"] == "transcript.text.delta"
        assert events[-1]["error"]["code"] == "inference_failed"


@pytest.mark.parametrize(
    ("data", "fields", "status", "code", "param"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, {}, 415, "unsupported_audio_format", "file"),
        (b"", {}, 415, "unsupported_audio_format", "file"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\xff" * 200, {}, 422, "invalid_audio", "file"),
        (wav(0.5, 8000) * 1 + b"\0" * (70 * 1024), {}, 413, "request_too_large", "file"),
        (wav(), {"response_format": "xml"}, 400, "invalid_request", "response_format"),
        (wav(), {"temperature": "3"}, 400, "invalid_request", "temperature"),
    ],
)
async def test_uploads_are_checked_by_content_size_and_fields(
    data, fields, status, code, param
) -> None:
    async with serve(settings(), loader_for(FakeTranscriber())) as client:
        await wait_ready(client)
        answer = await client.post("/v1/audio/transcriptions", **upload(data, **fields))
        assert_envelope(answer, status, code, param)


async def test_each_type_refuses_the_other_types_endpoints() -> None:
    async with serve(settings(), loader_for(FakeTranscriber())) as client:
        await wait_ready(client)
        speech = await client.post("/v1/audio/speech", json={"input": "hi", "voice": "alloy"})
        assert "fake-stt" in assert_envelope(speech, 400, "wrong_model_type", "model")["message"]
        assert_envelope(await client.get("/v1/audio/voices"), 400, "wrong_model_type")
    async with serve(settings("tts"), loader_for(FakeSpeaker())) as client:
        await wait_ready(client)
        heard = await client.post("/v1/audio/transcriptions", **upload(wav()))
        assert_envelope(heard, 400, "wrong_model_type", "model")


async def test_voices_and_speech_in_each_format_decode_at_the_voice_rate() -> None:
    speaker = FakeSpeaker()
    async with serve(settings("tts"), loader_for(speaker)) as client:
        await wait_ready(client)
        voices = (await client.get("/v1/audio/voices")).json()
        assert voices == {
            "object": "list",
            "data": [
                {"id": "fake-voice", "name": "fake", "language": "en_US", "sample_rate": 22050}
            ],
        }
        for fmt, media in (
            ("mp3", "audio/mpeg"),
            ("opus", "audio/ogg"),
            ("flac", "audio/flac"),
            ("aac", "audio/aac"),
            ("wav", "audio/wav"),
        ):
            answer = await client.post(
                "/v1/audio/speech",
                json={"input": "One. Two. Three.", "voice": "alloy", "response_format": fmt},
            )
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"] == media
            assert answer.headers["x-sample-rate"] == "22050"
            with av.open(io.BytesIO(answer.content)) as container:
                seconds = sum(f.samples / f.sample_rate for f in container.decode(audio=0))
            assert seconds == pytest.approx(0.3, abs=0.1), fmt  # mp3/aac pad a frame
        pcm = await client.post(
            "/v1/audio/speech",
            json={
                "input": "One. Two.",
                "voice": "fake-voice",
                "response_format": "pcm",
                "speed": 2,
            },
        )
        assert pcm.headers["content-type"] == "audio/pcm"
        assert len(pcm.content) == 2 * 2 * int(22050 * 0.1 / 2)
        assert speaker.jobs[-1].speed == 2


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"input": "hi", "voice": "nobody"}, "invalid_request", "voice"),
        ({"input": "x" * 201, "voice": "alloy"}, "invalid_request", "input"),
        ({"input": "", "voice": "alloy"}, "invalid_request", "input"),
        ({"input": "hi", "speed": 9}, "invalid_request", "speed"),
        ({"input": "hi", "response_format": "ogg"}, "invalid_request", "response_format"),
    ],
)
async def test_bad_speech_requests_are_400(body, code, param) -> None:
    async with serve(settings("tts"), loader_for(FakeSpeaker())) as client:
        await wait_ready(client)
        error = assert_envelope(await client.post("/v1/audio/speech", json=body), 400, code, param)
        if param == "voice":
            assert "fake-voice" in error["message"]


async def test_speech_streams_its_first_sentence_before_the_rest_is_spoken() -> None:
    """The answer's first bytes reach the client while the speaker is held after its
    first sentence: they cannot have waited for the whole text."""
    speaker = FakeSpeaker()
    speaker.gate = threading.Event()
    app = create_app(settings("tts"), loader_for(speaker))
    async with serve_http(app) as url, httpx.AsyncClient(base_url=url) as client:
        await wait_ready(client)
        body = {"input": "One. Two. Three.", "voice": "alloy", "response_format": "pcm"}
        async with client.stream("POST", "/v1/audio/speech", json=body) as answer:
            chunks = answer.aiter_raw()
            first = await chunks.__anext__()
            assert first and speaker.spoken == 1
            progress = (await client.get("/v1/progress")).json()
            assert progress == {"running": True, "step": 1, "steps": 3}
            speaker.gate.set()
            rest = b"".join([chunk async for chunk in chunks])
        assert speaker.spoken == 3
        assert len(first + rest) == 3 * 2 * int(22050 * 0.1)
        idle = (await client.get("/v1/progress")).json()
        assert idle == {"running": False, "step": 0, "steps": 0}


async def test_a_full_queue_is_429_with_retry_after() -> None:
    speaker = FakeSpeaker()
    speaker.gate = threading.Event()
    app = create_app(settings("tts", queue_limit=1), loader_for(speaker))
    body = {"input": "One. Two.", "voice": "alloy", "response_format": "pcm"}
    async with serve_http(app) as url, httpx.AsyncClient(base_url=url) as client:
        await wait_ready(client)
        async with client.stream("POST", "/v1/audio/speech", json=body) as running:
            chunks = running.aiter_raw()
            await chunks.__anext__()
            waiting = asyncio.ensure_future(client.post("/v1/audio/speech", json=body))
            for _ in range(500):
                if app.state.worker.admitted == 2:
                    break
                await asyncio.sleep(0.01)
            refused = await client.post("/v1/audio/speech", json=body)
            assert_envelope(refused, 429, "queue_full")
            assert refused.headers["Retry-After"]
            speaker.gate.set()
            async for _ in chunks:
                pass
        assert (await waiting).status_code == 200
