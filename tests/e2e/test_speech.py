"""Speech both ways through the real stack: the real manager (process runtime) starting
the real audio server with the small real models (Whisper tiny.en on faster-whisper, the
Piper voice en_US-joe-medium), behind the real proxy with an API key, driven by the real
``openai`` SDK.

- espeak-ng speaks a known sentence to a WAV; ``audio.transcriptions.create`` gets its
  words back (the word error rate is reported in test-artifacts/speech-wer.json and
  bounded), as json, verbose_json (segments) and a stream of segment events;
- ``audio.speech.create`` returns audio that decodes (mp3 with PyAV, flac with sox) to a
  plausible duration, and transcribing it back finds the input's words (a round trip);
- a long speech answer arrives a sentence at a time: its first bytes reach the client
  while the server is still synthesising the rest (read from the audio server's
  ``/v1/progress`` right after them, with a lease's key: an order, not a timing);
- the MCP tools through the real ``mcp`` client: ``txt2speech`` speaks with Piper (a WAV
  whose header holds its real length, and a link), ``speech2txt`` hears that link back
  with Whisper, with progress by segment (a round trip through the audio store);
- a wrong model type is the proxy's ``wrong_model_type``; an upload that is not audio
  its 415.

Marker ``speech``; skips (with the fix) when the models, the stack, espeak-ng or sox are
missing.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.browser.uistack import API_KEY, ARTIFACTS, Stack, free_port, run_stack
from tests.e2e.speech import SpeechParts, speech_parts, word_error_rate, words

pytestmark = [pytest.mark.speech]

LOAD_DEADLINE_S = 300.0
"""Whisper tiny and the Piper voice load in seconds; this only stops a broken start from hanging."""
SENTENCE = "The weather today is sunny with a light breeze from the north."
SPOKEN = "Good morning. The garden needs water before noon. Please close the blue window."
WER_BOUND = 0.25
ROUND_TRIP_BOUND = 0.34


@pytest.fixture(scope="module")
def parts() -> SpeechParts:
    return speech_parts()


@pytest.fixture(scope="module")
def speech_stack(tmp_path_factory: pytest.TempPathFactory, parts: SpeechParts) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("speech")
    common = {
        "image": "homelab-ai/audioserver:0.1.0",
        "command": [sys.executable, "-m", "audioserver"],
        "device": "cpu",
        "gpu": False,
        "start_timeout": LOAD_DEADLINE_S,
        "env": {"HF_HUB_OFFLINE": "1"},
    }
    stt_port, tts_port = free_port(), free_port()
    models = {
        "whisper": {
            **common,
            "type": "stt",
            "container": f"speech-{stt_port}",
            "port": stt_port,
            "model": str(parts.stt_model),
            "compute_type": "int8",
            "gpu_memory_mib": 128,
        },
        "piper": {
            **common,
            "type": "tts",
            "container": f"speech-{tts_port}",
            "port": tts_port,
            "model": str(parts.tts_voice),
            "gpu_memory_mib": 0,
        },
    }
    settings = {"HOMELAB_QUEUE_TIMEOUT": str(LOAD_DEADLINE_S), "HOMELAB_GPU_BUDGET_MIB": "1024"}
    with run_stack(workdir, models, "whisper", name="speech", manager_settings=settings) as stack:
        yield stack


def client(stack: Stack):  # noqa: ANN201 (openai.OpenAI)
    import openai

    return openai.OpenAI(base_url=stack.auth_proxy_url + "v1", api_key=API_KEY, timeout=300)


def espeak(parts: SpeechParts, text: str, path: Path) -> Path:
    subprocess.run([parts.espeak, "-w", str(path), text], check=True, capture_output=True)
    return path


def sox_seconds(parts: SpeechParts, path: Path) -> float:
    """The audio's length as sox decodes it (`sox FILE -n stat`)."""
    done = subprocess.run([parts.sox, str(path), "-n", "stat"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for line in done.stderr.splitlines():
        if line.startswith("Length (seconds):"):
            return float(line.split(":", 1)[1])
    raise AssertionError(f"sox printed no length:\n{done.stderr}")


def test_transcriptions_of_espeak_speech_get_its_words_back(
    speech_stack: Stack, parts: SpeechParts, tmp_path: Path
) -> None:
    sdk = client(speech_stack)
    wav = espeak(parts, SENTENCE, tmp_path / "sentence.wav")
    with wav.open("rb") as f:
        heard = sdk.audio.transcriptions.create(model="whisper", file=f)
    wer = word_error_rate(SENTENCE, heard.text)
    ARTIFACTS.mkdir(exist_ok=True)
    report = {"reference": SENTENCE, "heard": heard.text, "word_error_rate": round(wer, 3)}
    (ARTIFACTS / "speech-wer.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nWER {wer:.3f}: {heard.text!r}")
    assert wer <= WER_BOUND, report

    with wav.open("rb") as f:
        verbose = sdk.audio.transcriptions.create(
            model="whisper", file=f, response_format="verbose_json"
        )
    assert verbose.segments and verbose.duration == pytest.approx(sox_seconds(parts, wav), abs=0.1)
    assert verbose.segments[-1].end <= verbose.duration + 0.5

    with wav.open("rb") as f:
        events = list(sdk.audio.transcriptions.create(model="whisper", file=f, stream=True))
    assert [e.type for e in events][-1] == "transcript.text.done"
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert deltas and "".join(e.delta for e in deltas).strip() == events[-1].text
    assert word_error_rate(SENTENCE, events[-1].text) <= WER_BOUND
    # Progress by segment (the jobs read it): each delta says where it ends in the audio.
    ends = [e.model_extra["segment"]["end"] / e.model_extra["duration"] for e in deltas]
    assert ends == sorted(ends) and 0 < ends[-1] <= 1.05


def test_speech_decodes_and_transcribes_back_to_its_words(
    speech_stack: Stack, parts: SpeechParts, tmp_path: Path
) -> None:
    import av

    sdk = client(speech_stack)
    mp3 = sdk.audio.speech.create(model="piper", voice="alloy", input=SPOKEN)
    assert mp3.response.headers["content-type"] == "audio/mpeg"
    with av.open(io.BytesIO(mp3.content)) as container:
        seconds = sum(frame.samples / frame.sample_rate for frame in container.decode(audio=0))
    # Three short sentences: a few seconds of speech at any sane speaking rate.
    assert 2.0 < seconds < 15.0, seconds

    flac = tmp_path / "spoken.flac"
    sdk.audio.speech.create(
        model="piper", voice="alloy", input=SPOKEN, response_format="flac"
    ).write_to_file(flac)
    assert sox_seconds(parts, flac) == pytest.approx(seconds, abs=0.3)

    faster = sdk.audio.speech.create(
        model="piper", voice="en_US-joe-medium", input=SPOKEN, response_format="wav", speed=2.0
    )
    wav = tmp_path / "spoken.wav"
    wav.write_bytes(faster.content)
    assert sox_seconds(parts, wav) < seconds * 0.75

    with flac.open("rb") as f:
        heard = sdk.audio.transcriptions.create(model="whisper", file=f)
    wer = word_error_rate(SPOKEN, heard.text)
    print(f"\nround trip WER {wer:.3f}: {heard.text!r}")
    assert wer <= ROUND_TRIP_BOUND, heard.text
    assert {"garden", "water", "window"} <= set(words(heard.text)), heard.text


def test_long_speech_streams_before_the_text_is_all_spoken(speech_stack: Stack) -> None:
    sentences = [f"This is sentence number {n} of a long answer." for n in range(1, 41)]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = {
        "model": "piper",
        "input": " ".join(sentences),
        "voice": "alloy",
        "response_format": "pcm",
    }
    # A lease of our own, for the audio server's side channel (its address and key).
    lease = speech_stack.manager("POST", "/v1/leases", json={"model": "piper"}).json()
    try:
        server = httpx.Client(
            base_url=lease["base_url"], headers={"Authorization": f"Bearer {lease['api_key']}"}
        )
        with httpx.Client(base_url=speech_stack.auth_proxy_url, headers=auth, timeout=300) as proxy:
            with proxy.stream("POST", "v1/audio/speech", json=body) as answer:
                assert answer.status_code == 200 and answer.headers["x-sample-rate"] == "22050"
                chunks = answer.iter_raw()
                first = next(chunks)
                progress = server.get("/v1/progress").json()
                rest = b"".join(chunks)
        assert first
        # When the first bytes were in our hands, the server had not spoken the whole text.
        assert progress["running"] and 0 < progress["step"] < progress["steps"], progress
        assert progress["steps"] == len(sentences)
        assert len(first) < len(first + rest) / 10
    finally:
        speech_stack.manager("DELETE", f"/v1/leases/{lease['lease_id']}")


async def test_mcp_speaks_with_piper_and_hears_its_link_with_whisper(
    speech_stack: Stack,
) -> None:
    import base64
    import wave

    from mcp import types

    from tests.mcp_client import Recorder, http_session, links, text_of

    said_progress, heard_progress = Recorder(), Recorder()
    async with http_session(speech_stack.auth_proxy_url + "mcp", API_KEY) as session:
        said = await session.call_tool(
            "txt2speech",
            {"model": "piper", "input": SPOKEN, "format": "wav"},
            progress_callback=said_progress,
        )
        assert not said.is_error, text_of(said)
        (clip,) = [c for c in said.content if isinstance(c, types.AudioContent)]
        raw = base64.b64decode(clip.data)
        with wave.open(io.BytesIO(raw)) as w:  # the stream's open sizes were set on keeping
            seconds = w.getnframes() / w.getframerate()
        assert w.getframerate() == 22050 and 2.0 < seconds < 15.0, seconds
        assert (said.structured_content or {})["duration_s"] == pytest.approx(seconds, abs=0.01)
        (link,) = links(said)
        heard = await session.call_tool(
            "speech2txt", {"model": "whisper", "audio": link}, progress_callback=heard_progress
        )
        assert not heard.is_error, text_of(heard)
    wer = word_error_rate(SPOKEN, text_of(heard))
    print(f"\nMCP round trip WER {wer:.3f}: {text_of(heard)!r}")
    assert wer <= ROUND_TRIP_BOUND, text_of(heard)
    assert said_progress.seen and said_progress.rising() and heard_progress.rising()
    assert any("transcribing" in m for m in heard_progress.messages), heard_progress.messages


def test_wrong_types_and_non_audio_are_refused(speech_stack: Stack, tmp_path: Path) -> None:
    import openai

    sdk = client(speech_stack)
    with pytest.raises(openai.BadRequestError) as wrong:
        sdk.audio.speech.create(model="whisper", voice="alloy", input="hello")
    assert wrong.value.code == "wrong_model_type" and "piper" in wrong.value.message
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("this is not audio\n" * 10)
    with not_audio.open("rb") as f, pytest.raises(openai.APIStatusError) as refused:
        sdk.audio.transcriptions.create(model="whisper", file=f)
    assert refused.value.status_code == 415
    voices = httpx.get(
        speech_stack.auth_proxy_url + "v1/audio/voices",
        params={"model": "piper"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    ).json()
    assert voices["data"][0] == {
        "id": "en_US-joe-medium",
        "name": "joe",
        "language": "en_US",
        "sample_rate": 22050,
    }
