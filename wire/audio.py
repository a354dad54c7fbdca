"""Audio on the wire: what an uploaded file is (by its first bytes, never its name), and
the speech formats with their media types. The proxy checks an upload before it takes a
lease (`proxy.routes_openai`), the audio server again before it decodes one
(``audioserver``); both answer an unknown format with 415 ``unsupported_audio_format``.
"""

from __future__ import annotations

from typing import Literal

UPLOAD_FORMATS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
"""The upload formats OpenAI's transcription API names (what a client may send)."""

SNIFF_BYTES = 16
"""How many leading bytes `sniff_audio` needs."""

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
SPEECH_MEDIA_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
"""The ``Content-Type`` of each ``/v1/audio/speech`` ``response_format``: ``opus`` is Ogg
Opus, ``pcm`` 16-bit little-endian mono at the rate in ``X-Sample-Rate``."""
OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)
"""OpenAI's voice names: accepted as the model's default voice, so clients that always
send one of them work unchanged."""
SAMPLE_RATE_HEADER = "X-Sample-Rate"
"""The speech answer's sample rate in Hz (every format; ``pcm`` has no header of its own)."""


def sniff_audio(head: bytes) -> str | None:
    """The container of an audio file from its first `SNIFF_BYTES` bytes: ``wav``,
    ``mp3``, ``ogg`` (Vorbis or Opus), ``flac``, ``webm`` (Matroska too), ``mp4`` (M4A,
    3GP) or ``aac`` (ADTS); None for anything else (a picture, text, an empty file)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # An MPEG audio frame (layer bits 01/10/11) or ADTS AAC (layer bits 00).
        return "aac" if head[1] & 0x06 == 0 else "mp3"
    return None
