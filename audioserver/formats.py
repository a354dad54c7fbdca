"""Audio in and out: reading an upload (checked by its first bytes, then decoded with
PyAV to 16 kHz mono, what Whisper takes) and encoding speech as it is made.

`Encoder` turns 16-bit mono PCM, fed a sentence at a time, into the bytes of one
``response_format`` as they become ready: ``pcm`` as it is, ``wav`` with a header that
declares an open length (as OpenAI's streamed WAV does: 0xFFFFFFFF sizes, read to the
end), ``mp3``, ``opus`` (Ogg Opus), ``aac`` (ADTS) and ``flac`` through PyAV's encoders,
written to an in-memory pipe that is drained after each sentence.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from typing import Any

import numpy as np

from audioserver.errors import UndecodableAudio, UnsupportedAudio, UploadTooLarge
from wire.audio import SNIFF_BYTES, sniff_audio

WHISPER_RATE = 16000
"""Whisper listens at 16 kHz mono."""

SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
"""The ``response_format`` values of ``/v1/audio/speech`` (`wire.audio.SPEECH_MEDIA_TYPES`)."""

# PyAV: (container format, codec, encoder sample rate or None for the voice's own)
_AV = {
    "mp3": ("mp3", "libmp3lame", None),
    "opus": ("ogg", "libopus", 48000),
    "aac": ("adts", "aac", None),
    "flac": ("flac", "flac", None),
}
_OPEN_SIZE = 0xFFFFFFFF


def check_upload(data: bytes, limit: int) -> str:
    """The upload's container (`wire.audio.sniff_audio`). Raises UploadTooLarge over
    `limit` bytes, UnsupportedAudio when its first bytes are no known audio format."""
    if len(data) > limit:
        raise UploadTooLarge(
            f"the audio file is larger than this server's limit of {limit} bytes", param="file"
        )
    kind = sniff_audio(data[:SNIFF_BYTES])
    if kind is None:
        raise UnsupportedAudio(
            "the file is not audio this server reads (by its content): send "
            "flac, m4a, mp3, mp4, ogg, wav or webm",
            param="file",
        )
    return kind


def decode(data: bytes) -> np.ndarray:
    """The upload as 16 kHz mono float32 samples in [-1, 1]. Blocks (run it on the worker).
    Raises UndecodableAudio when PyAV cannot read it or it holds no samples."""
    from faster_whisper.audio import decode_audio

    try:
        samples: np.ndarray = decode_audio(io.BytesIO(data), sampling_rate=WHISPER_RATE)
    except Exception as exc:  # PyAV raises many kinds (av.error.*, ValueError, ...)
        raise UndecodableAudio(f"the audio file cannot be decoded: {exc}", param="file") from exc
    if samples.size == 0:
        raise UndecodableAudio("the audio file holds no sound", param="file")
    return samples


def wav_header(rate: int, size: int = _OPEN_SIZE) -> bytes:
    """A 16-bit mono PCM WAV header; `size`: the data's length (default: open)."""
    riff = _OPEN_SIZE if size == _OPEN_SIZE else 36 + size
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", size)
    )


class _Pipe(io.RawIOBase):
    """A write-only sink PyAV writes into; `take` empties it."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._buf += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class Encoder:
    """Encodes 16-bit mono PCM at `rate` into `fmt`, a piece at a time (not thread-safe;
    one per answer, used on the worker thread)."""

    def __init__(self, fmt: str, rate: int) -> None:
        self.fmt, self.rate = fmt, rate
        self._started = False
        self._container: Any = None
        self._pipe = _Pipe()
        if fmt in _AV:
            import av

            container_format, codec, codec_rate = _AV[fmt]
            # Small I/O buffers and Ogg pages of 20 ms: bytes leave after each sentence.
            options = {"page_duration": "20000"} if container_format == "ogg" else {}
            self._container = av.open(
                self._pipe,
                mode="w",
                format=container_format,
                buffer_size=4096,
                container_options=options,
            )
            stream = self._container.add_stream(codec, rate=codec_rate or rate)
            stream.layout = "mono"
            self._stream = stream
            self._resampler = av.AudioResampler(
                format=stream.format.name if stream.format else "s16",
                layout="mono",
                rate=codec_rate or rate,
            )
            self._pts = 0

    def feed(self, pcm: bytes) -> bytes:
        """The encoded bytes ready after `pcm` (may be empty for a short piece)."""
        if self.fmt == "pcm":
            return pcm
        if self.fmt == "wav":
            head = b"" if self._started else wav_header(self.rate)
            self._started = True
            return head + pcm
        import av

        samples = np.frombuffer(pcm, dtype=np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._pts
        frame.time_base = Fraction(1, self.rate)
        self._pts += samples.shape[1]
        for out in self._resampler.resample(frame):
            for packet in self._stream.encode(out):
                self._container.mux(packet)
        return self._pipe.take()

    def finish(self) -> bytes:
        """The last bytes (encoder and container flushed)."""
        if self.fmt == "pcm":
            return b""
        if self.fmt == "wav":
            return b"" if self._started else wav_header(self.rate)
        for out in self._resampler.resample(None):
            for packet in self._stream.encode(out):
                self._container.mux(packet)
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._pipe.take()
