"""Unit tier for speech in the proxy (issue 24): the generated-audio store, audio
arguments, and transcription jobs (JSON-RPC, batches), the MCP tools and the audio links
on the real proxy app in front of `FakeManager` and the stand-in audio server
(tests/fixtures/fakeaudio, one stt and one tts process in threads)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import stat
import threading
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import types
from proxy_fakes import TOKEN, FakeManager, serve_asgi

from proxy.app import create_app
from proxy.audio import AudioStore, closed_wav, pcm_to_wav, sniff_audio, wav_seconds
from proxy.errors import UpstreamError
from proxy.keys import Principal
from proxy.settings import ProxySettings
from proxy.speech import AudioArgumentError, own_audio_name, read_audio
from tests.fixtures.fakeaudio.server import Config, FakeAudio, speech_parts, wav_header
from tests.mcp_client import Recorder, http_session, links, text_of

ALICE, BOB = Principal(name="alice"), Principal(name="bob")
ADMIN = Principal(name="root", admin=True)
KEY_A, KEY_B = "ut-alice-9Fq2Lm7Xc4Vb", "ut-bob-3Hs8Pq1Zr6Tn"
MODELS = {"hear": {"type": "stt"}, "say": {"type": "tts"}, "chat": {"type": "text"}}
SENTENCE = "The quick brown fox jumps over the lazy dog. It was not amused!"


def wav(seconds: float = 0.5, rate: int = 16000) -> bytes:
    return pcm_to_wav(b"\0\0" * int(seconds * rate), rate)


def spoken(text: str) -> bytes:
    """The stand-in's own speech of `text` (which it transcribes back to the words)."""
    parts = speech_parts(text, 1.0)
    return wav_header(text, sum(map(len, parts))) + b"".join(parts)


def data_url(data: bytes, media: str = "audio/wav") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


# -- the store ----------------------------------------------------------------------


def test_audio_is_read_back_only_by_its_owner_or_an_admin(tmp_path: Path) -> None:
    store = AudioStore(tmp_path / "a", ttl=60, max_bytes=1 << 20, key_bytes=1 << 20)
    name = store.put(wav(), ALICE.name)
    assert name.endswith(".wav") and store.owner(name) == "alice"
    found = store.get_owned(name, ALICE)
    assert found is not None and found[1] == "audio/wav" and found[0] == wav()
    assert store.get_owned(name, BOB) is None  # another key: as if there were none
    assert store.get_owned(name, ADMIN) is not None
    assert store.get_owned(name, Principal(name="")) is None  # nobody owns nothing
    for mangled in ("x" + name[1:], name[:-4], "../" + name, name + ".owner"):
        assert store.get_owned(mangled, ADMIN) is None
    assert not store.delete(name, BOB) and store.delete(name, ALICE)
    assert store.get_owned(name, ALICE) is None
    folder = tmp_path / "a"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_each_key_is_bounded_on_its_own_and_the_store_in_total(tmp_path: Path) -> None:
    one = len(wav(1.0))
    store = AudioStore(tmp_path, ttl=1000, max_bytes=4 * one + 10, key_bytes=2 * one + 10)
    made = iter(range(100))

    def put(owner: str) -> str:
        name = store.put(wav(1.0), owner)
        at = 1e9 + next(made)  # each file older than the next, whatever the clock's grain
        os.utime(tmp_path / name, (at, at))
        return name

    alice = [put(ALICE.name) for _ in range(3)]
    # alice's oldest went for her third; nobody else's was touched
    assert store.owner(alice[0]) is None
    assert all(store.owner(n) == "alice" for n in alice[1:])
    bob = [put(BOB.name) for _ in range(2)]
    carol = put("carol")
    # five files would pass the total: the oldest of all (alice's second) went
    assert [store.owner(n) for n in alice] == [None, None, "alice"]
    assert all(store.owner(n) == "bob" for n in bob) and store.owner(carol) == "carol"
    assert stat.S_IMODE((tmp_path / carol).stat().st_mode) == 0o600


def test_expired_audio_is_gone(tmp_path: Path) -> None:
    store = AudioStore(tmp_path, ttl=60, max_bytes=1 << 20, key_bytes=1 << 20)
    name = store.put(wav(), ALICE.name)
    old = os.stat(tmp_path / name).st_mtime - 120
    os.utime(tmp_path / name, (old, old))
    assert store.get_owned(name, ALICE) is None
    assert not (tmp_path / name).exists() and not (tmp_path / (name + ".owner")).exists()


def test_only_audio_is_stored_and_formats_are_told_by_their_bytes(tmp_path: Path) -> None:
    store = AudioStore(tmp_path, ttl=60, max_bytes=1 << 20, key_bytes=1 << 20)
    with pytest.raises(UpstreamError) as caught:
        store.put(b"\x89PNG\r\n\x1a\n....", ALICE.name)
    assert caught.value.code == "bad_audio"
    assert sniff_audio(b"OggS\0") == "ogg" and sniff_audio(b"fLaC\0") == "flac"
    assert sniff_audio(b"ID3\4") == "mp3" and sniff_audio(b"\x1a\x45\xdf\xa3") == "webm"
    assert sniff_audio(b"RIFF\0\0\0\0WEBP") is None
    assert wav_seconds(wav(1.5)) == pytest.approx(1.5)
    m4a = store.put(b"\0\0\0\x20ftypM4A \0\0\0\0", ALICE.name)  # uploads OpenAI takes
    assert m4a.endswith(".mp4") and store.get_owned(m4a, ALICE) is not None


def test_a_streamed_wav_is_kept_with_the_sizes_it_holds() -> None:
    """The audio server streams WAV with open sizes (0xFFFFFFFF); kept as such, players
    and `wave` read a length of 37 hours."""
    made = wav(1.25)
    streamed = made[:4] + b"\xff\xff\xff\xff" + made[8:40] + b"\xff\xff\xff\xff" + made[44:]
    assert wav_seconds(streamed) != pytest.approx(1.25)
    assert closed_wav(streamed) == made and wav_seconds(closed_wav(streamed)) == 1.25
    odd = streamed + b"\0"  # a torn last sample is not counted
    assert closed_wav(odd)[40:44] == made[40:44]
    assert closed_wav(b"ID3\4 not a wav") == b"ID3\4 not a wav"


# -- audio arguments ------------------------------------------------------------------


async def test_audio_arguments_are_data_urls_or_the_callers_own_links(tmp_path: Path) -> None:
    store = AudioStore(tmp_path, ttl=60, max_bytes=1 << 20, key_bytes=1 << 20)
    name = store.put(wav(), ALICE.name)
    link = f"http://elsewhere:9/v1/audio/files/{name}"
    assert own_audio_name(link) == name and own_audio_name("/v1/audio/files/" + name) == name
    assert await read_audio(store, link, "audio", 1 << 20, ALICE) == wav()
    assert await read_audio(store, data_url(wav()), "audio", 1 << 20, BOB) == wav()
    assert await read_audio(store, base64.b64encode(wav()).decode(), "audio", 1 << 20, BOB)
    refusals = {
        "another key's link": (link, BOB),
        "a foreign URL": ("https://example.com/a.wav", ALICE),
        "not audio": (data_url(b"\x89PNG\r\n\x1a\n" + bytes(20), "image/png"), ALICE),
        "not base64": ("data:audio/wav;base64,@@@", ALICE),
        "too large": (data_url(wav(2.0)), ALICE),
        "empty": ("  ", ALICE),
    }
    for why, (value, who) in refusals.items():
        with pytest.raises(AudioArgumentError) as caught:
            await read_audio(store, value, "audio", len(wav(1.0)), who)
        assert caught.value.param == "audio", why


# -- on the real proxy app ------------------------------------------------------------


@contextlib.contextmanager
def fake_audio(kind: str, name: str, delay: float = 0.0) -> Iterator[str]:
    server = FakeAudio(Config(kind, name, "127.0.0.1", 0, delay, ""))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Speech:
    url: str
    manager: FakeManager
    a: httpx.AsyncClient
    b: httpx.AsyncClient


@pytest.fixture
async def speech(tmp_path: Path) -> AsyncIterator[Speech]:
    # the stand-in speaker takes 0.6 s a sentence: MCP's progress polls sentences each 0.5 s
    with fake_audio("stt", "hear", delay=0.01) as stt, fake_audio("tts", "say", 0.6) as tts:
        manager = FakeManager(MODELS, stt)
        manager.urls = {"hear": stt, "say": tts}
        async with serve_asgi(manager.app) as manager_url:
            settings = ProxySettings(
                manager_url=manager_url,
                manager_token=TOKEN,
                app_dir=tmp_path / "app",
                image_dir=tmp_path / "images",
                audio_dir=tmp_path / "audio",
                jobs_url=str(tmp_path / "jobs.db"),
                models_cache_ttl=0.5,
                api_keys=[KEY_A, KEY_B],
                max_upload_bytes=1 << 20,
            )
            async with serve_asgi(create_app(settings)) as url:
                a = httpx.AsyncClient(base_url=url, timeout=30, headers=_auth(KEY_A))
                b = httpx.AsyncClient(base_url=url, timeout=30, headers=_auth(KEY_B))
                async with a, b:
                    yield Speech(url, manager, a, b)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _rpc(client: httpx.AsyncClient, method: str, **params: Any) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    reply = (await client.post("/rpc", json=body)).json()
    assert isinstance(reply, dict)
    return reply


async def _events(client: httpx.AsyncClient, path: str) -> list[tuple[str, Any]]:
    """A job's stream read to its ``end`` event: (event, data) pairs."""
    out: list[tuple[str, Any]] = []
    event = "message"
    async with client.stream("GET", path) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                out.append((event, json.loads(line[5:])))
                if event == "end":
                    return out
    return out


async def test_a_transcription_job_reports_progress_by_segment(speech: Speech) -> None:
    reply = await _rpc(
        speech.a, "create_transcription", model="hear", file=data_url(spoken(SENTENCE))
    )
    accepted = reply["result"]
    events = await _events(speech.a, accepted["stream"])
    progress = [d for e, d in events if e == "progress"]
    assert progress, events
    values = [p["progress"] for p in progress]
    assert values == sorted(values) and values[-1] == pytest.approx(1.0)
    tokens = "".join(d["content"] for e, d in events if e == "token")
    result = next(d for e, d in events if e == "result")
    assert result["text"] == tokens == SENTENCE
    assert [s["text"].strip() for s in result["segments"]] == [
        "The quick brown fox jumps over the lazy dog.",
        "It was not amused!",
    ]
    assert events[-1] == ("end", {"state": "SUCCESS"})
    # another key cannot see the task
    other = await _rpc(speech.b, "tasks.get", taskId=accepted["taskId"])
    assert other["error"]["code"] == -32001


async def test_transcription_jobs_refuse_bad_audio_and_other_types_at_once(
    speech: Speech,
) -> None:
    png = data_url(b"\x89PNG\r\n\x1a\n" + bytes(40), "image/png")
    cases = {
        "not audio": ({"model": "hear", "file": png}, "file"),
        "a foreign URL": ({"model": "hear", "file": "https://example.com/x.wav"}, "file"),
        "no file": ({"model": "hear"}, "file"),
        "a text model": ({"model": "chat", "file": data_url(wav())}, "model"),
        "another key's file": ({"model": "hear", "file": "file-nope"}, "file"),
    }
    for why, (params, param) in cases.items():
        reply = await _rpc(speech.a, "create_transcription", **params)
        assert reply["error"]["code"] == -32602, why
        assert reply["error"]["data"]["param"] == param, (why, reply)


async def _upload(
    client: httpx.AsyncClient, data: bytes, purpose: str, name: str
) -> httpx.Response:
    return await client.post("/v1/files", files={"file": (name, data)}, data={"purpose": purpose})


async def test_a_batch_transcribes_uploaded_files_and_data_urls(speech: Speech) -> None:
    audio = await _upload(speech.a, spoken("Hello there."), "user_data", "hello.wav")
    assert audio.status_code == 200, audio.text
    audio_id = audio.json()["id"]
    assert audio.json()["purpose"] == "user_data"
    content = await speech.a.get(f"/v1/files/{audio_id}/content")
    assert content.headers["content-type"] == "audio/wav"
    assert (await speech.b.get(f"/v1/files/{audio_id}")).status_code == 404
    refused = await _upload(speech.a, b'{"not": "audio"}', "user_data", "x.json")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "file"
    lines = [
        {"custom_id": "by-id", "body": {"model": "hear", "file": audio_id}},
        {"custom_id": "inline", "body": {"model": "hear", "file": data_url(spoken("Good bye."))}},
    ]
    jsonl = "".join(
        json.dumps({"method": "POST", "url": "/v1/audio/transcriptions", **line}) + "\n"
        for line in lines
    )
    batch_file = (await _upload(speech.a, jsonl.encode(), "batch", "b.jsonl")).json()["id"]
    # bob cannot name alice's audio in his batch
    bob_jsonl = jsonl.replace(lines[1]["body"]["file"], audio_id).encode()
    bob_file = (await _upload(speech.b, bob_jsonl, "batch", "b.jsonl")).json()["id"]
    create = {"endpoint": "/v1/audio/transcriptions", "completion_window": "24h"}
    bob = await speech.b.post("/v1/batches", json={**create, "input_file_id": bob_file})
    assert bob.status_code == 400 and bob.json()["error"]["code"] == "file_not_found"
    assert bob.json()["error"]["message"].startswith("Line 1:")
    # an audio file is no batch input
    wrong = await speech.a.post("/v1/batches", json={**create, "input_file_id": audio_id})
    assert wrong.status_code == 400
    batch = await speech.a.post("/v1/batches", json={**create, "input_file_id": batch_file})
    assert batch.status_code == 200, batch.text
    for _ in range(300):
        got = (await speech.a.get(f"/v1/batches/{batch.json()['id']}")).json()
        if got["status"] == "completed":
            break
        await asyncio.sleep(0.05)
    assert got["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    out = (await speech.a.get(f"/v1/files/{got['output_file_id']}/content")).text
    texts = {
        row["custom_id"]: row["response"]["body"]["text"]
        for row in map(json.loads, out.splitlines())
    }
    assert texts == {"by-id": "Hello there.", "inline": "Good bye."}


async def test_a_transcription_batch_line_gets_the_direct_routes_format_check(
    speech: Speech,
) -> None:
    """`check_transcript_format` at both entries: the same message, the line named."""
    line = {"model": "hear", "file": data_url(wav()), "response_format": "xml"}
    row = {"custom_id": "x", "method": "POST", "url": "/v1/audio/transcriptions", "body": line}
    upload = await _upload(speech.a, (json.dumps(row) + "\n").encode(), "batch", "b.jsonl")
    create = {"endpoint": "/v1/audio/transcriptions", "completion_window": "24h"}
    refused = await speech.a.post(
        "/v1/batches", json={**create, "input_file_id": upload.json()["id"]}
    )
    direct = await speech.a.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav())},
        data={"model": "hear", "response_format": "xml"},
    )
    assert refused.status_code == direct.status_code == 400, (refused.text, direct.text)
    error, want = refused.json()["error"], direct.json()["error"]
    assert error["param"] == want["param"] == "response_format"
    assert error["message"] == f"Line 1: {want['message']}"


async def test_mcp_speaks_links_and_transcribes_its_own_speech(speech: Speech) -> None:
    recorder = Recorder()
    async with http_session(speech.url + "/mcp", KEY_A) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert tools["speech2txt"].input_schema["properties"]["model"]["enum"] == ["hear"]
        assert tools["txt2speech"].input_schema["properties"]["model"]["enum"] == ["say"]
        said = await session.call_tool(
            "txt2speech", {"input": SENTENCE, "voice": "fake-bob"}, progress_callback=recorder
        )
        assert not said.is_error, text_of(said)
        audio = [c for c in said.content if isinstance(c, types.AudioContent)]
        assert audio and audio[0].mime_type == "audio/wav"
        raw = base64.b64decode(audio[0].data)
        spoken_seconds = sum(map(len, speech_parts(SENTENCE, 1.0))) / 2 / 16000
        with wave.open(io.BytesIO(raw)) as w:  # streamed with open sizes, kept with real ones
            assert w.getframerate() == 16000
            assert w.getnframes() / 16000 == pytest.approx(spoken_seconds)
        (link,) = links(said)
        meta = said.structured_content or {}
        assert meta["url"] == link and meta["duration_s"] == pytest.approx(spoken_seconds, abs=1e-3)
        assert recorder.messages and recorder.rising()
        assert "say is speaking: sentence 1 of 2" in recorder.messages, recorder.messages
        # the link: alice's only
        assert (await speech.a.get(link)).content == raw
        async with httpx.AsyncClient() as nobody:
            assert (await nobody.get(link)).status_code == 401
        other = await speech.b.get(link)
        assert other.status_code == 404 and other.json()["error"]["code"] == "audio_not_found"
        heard_by = Recorder()
        heard = await session.call_tool(
            "speech2txt", {"audio": link, "language": "en"}, progress_callback=heard_by
        )
        assert not heard.is_error, text_of(heard)
        assert text_of(heard) == SENTENCE
        assert any("transcribing" in m for m in heard_by.messages) and heard_by.rising()
        foreign = await session.call_tool("speech2txt", {"audio": "https://example.com/a.wav"})
        assert foreign.is_error and "'audio'" in text_of(foreign)
    async with http_session(speech.url + "/mcp", KEY_B) as session:
        stolen = await session.call_tool("speech2txt", {"audio": link})
        assert stolen.is_error and "not this key's" in text_of(stolen)
    gone = await speech.b.delete(link)
    assert gone.status_code == 404
    assert (await speech.a.delete(link)).status_code == 200
    assert (await speech.a.get(link)).status_code == 404
