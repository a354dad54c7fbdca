"""wire.audio's sniffing (the one rule the proxy and the audio server both apply to an
upload) and wire.events.data_frame (OpenAI's data-only events)."""

from __future__ import annotations

import io
import wave

import pytest

from wire.audio import SNIFF_BYTES, SPEECH_MEDIA_TYPES, sniff_audio
from wire.events import SseParser, data_frame


def _wav() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 160)
    return out.getvalue()


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (_wav(), "wav"),
        (b"fLaC\x00\x00\x00\x22" + b"\0" * 8, "flac"),
        (b"OggS\x00\x02" + b"\0" * 10, "ogg"),
        (b"\x1a\x45\xdf\xa3\x01\x00" + b"\0" * 10, "webm"),
        (b"\x00\x00\x00\x20ftypM4A " + b"\0" * 4, "mp4"),
        (b"ID3\x04\x00" + b"\0" * 11, "mp3"),
        (b"\xff\xfb\x90\x64" + b"\0" * 12, "mp3"),
        (b"\xff\xf1\x50\x80" + b"\0" * 12, "aac"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 8, None),
        (b"RIFF\x00\x00\x00\x00AVI LIST", None),
        (b"%PDF-1.7", None),
        (b"", None),
    ],
)
def test_uploads_are_known_by_their_first_bytes(head: bytes, kind: str | None) -> None:
    assert sniff_audio(head[:SNIFF_BYTES]) == kind


def test_every_speech_format_has_an_audio_media_type() -> None:
    assert set(SPEECH_MEDIA_TYPES) == {"mp3", "opus", "aac", "flac", "wav", "pcm"}
    assert all(t.startswith("audio/") for t in SPEECH_MEDIA_TYPES.values())


def test_a_data_frame_parses_back_with_no_event_name() -> None:
    frame = data_frame({"type": "transcript.text.delta", "delta": " héllo"})
    assert (
        frame
        == '{"type":"transcript.text.delta","delta":" héllo"}'.join(["data: ", "\n\n"]).encode()
    )
    parser = SseParser()
    parsed = [parser.feed(line) for line in frame.split(b"\n")]
    assert parsed == [None, ("message", '{"type":"transcript.text.delta","delta":" héllo"}'), None]
