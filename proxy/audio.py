"""The generated-audio store: speech made for MCP's ``txt2speech`` (and kept for links).

`AudioStore` is the image store (`proxy.images.ImageStore`) for audio files: each file is
named by an unguessable id (``<id>.<ext>``: a `MEDIA` key), kept beside the
name of the key that made it (``<id>.<ext>.owner``), 0600 in a 0700 folder, for
``HOMELAB_AUDIO_TTL`` seconds, and bounded in total (`MAX_COUNT` files,
``HOMELAB_AUDIO_STORE_MAX_BYTES``: the oldest go first) and per key
(``HOMELAB_AUDIO_STORE_KEY_BYTES``: storing one more deletes that key's oldest first, so
one key's flood never pushes out another's files before they expire).

Unlike an image URL, an audio link is not a capability: ``GET /v1/audio/files/<id>.<ext>``
answers only the key that made it (or an admin), and every other caller gets the same 404
as for a file that never existed (`get_owned`; docs/security.md).

Methods do blocking file I/O: call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import re
from pathlib import Path

from proxy.images import ImageStore
from proxy.keys import Principal
from wire.audio import SNIFF_BYTES
from wire.audio import sniff_audio as wire_sniff

MAX_COUNT = 1000
"""Most audio files kept, all keys together (the oldest go first)."""

MEDIA = {
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "ogg": "audio/ogg",
    "flac": "audio/flac",
    "webm": "audio/webm",
    "mp4": "audio/mp4",
    "aac": "audio/aac",
}
"""The audio kept, by the extension `sniff_audio` gives: every container
`wire.audio.sniff_audio` knows (uploads for transcription, speech made)."""
_NAME = re.compile(r"^[A-Za-z0-9_-]{32}\.(" + "|".join(MEDIA) + r")$")
FORMAT_EXT = {"mp3": "mp3", "wav": "wav", "opus": "ogg", "flac": "flac", "aac": "aac"}
"""``/v1/audio/speech``'s ``response_format`` -> the extension its file is kept under
(``pcm`` has no header: it is wrapped as WAV first, `pcm_to_wav`)."""
KNOWN = "WAV, MP3, Ogg, FLAC, WebM, M4A/MP4 or AAC"
"""The audio files the proxy takes, in words (error messages)."""


def sniff_audio(data: bytes) -> str | None:
    """The extension of an audio file by its first bytes (a `MEDIA` key), or None:
    `wire.audio.sniff_audio`, the one check the proxy and the audio server share."""
    return wire_sniff(data[:SNIFF_BYTES])


def closed_wav(data: bytes) -> bytes:
    """A streamed WAV (the audio server declares open sizes, 0xFFFFFFFF, while it speaks)
    with its RIFF and data sizes set to what it holds, so any player and `wave` read its
    length; other bytes as they are."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return data
    out = bytearray(data)
    pos = 12
    while pos + 8 <= len(out):
        size = int.from_bytes(out[pos + 4 : pos + 8], "little")
        if out[pos : pos + 4] == b"data":
            held = len(out) - pos - 8
            out[pos + 4 : pos + 8] = (held - held % 2).to_bytes(4, "little")
            out[4:8] = (len(out) - 8).to_bytes(4, "little")
            return bytes(out)
        pos += 8 + size + size % 2
    return data


def pcm_to_wav(pcm: bytes, rate: int) -> bytes:
    """16-bit little-endian mono PCM (the audio server's ``pcm``) as a WAV file."""
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


def wav_seconds(data: bytes) -> float | None:
    """A WAV file's duration in seconds, None when it cannot be read."""
    import io
    import wave

    try:
        with wave.open(io.BytesIO(data)) as w:
            rate = w.getframerate()
            return w.getnframes() / rate if rate else None
    except (wave.Error, EOFError):
        return None


class AudioStore(ImageStore):
    """Audio files on disk for a limited time, owned by a key (module docstring)."""

    NAME = _NAME
    MEDIA = MEDIA
    WHAT = "audio"

    def __init__(
        self,
        directory: Path,
        ttl: float,
        *,
        max_bytes: int,
        key_bytes: int,
        max_count: int = MAX_COUNT,
        tighten_folder: bool = True,
    ) -> None:
        super().__init__(
            directory, ttl, max_count=max_count, max_bytes=max_bytes, tighten_folder=tighten_folder
        )
        self.key_bytes = key_bytes

    @staticmethod
    def sniff(data: bytes) -> str | None:
        return sniff_audio(data)

    def put(self, data: bytes, owner: str) -> str:
        """Store an audio file for `owner`; returns its name (``<id>.<ext>``). Deletes the
        owner's oldest files while the owner's total is over `key_bytes`, then the oldest
        of all while the store is over its caps. Raises UpstreamError (``bad_audio``)
        for bytes that are no audio file we know. Blocking."""
        name = super().put(data, owner)
        self.evict_owner(owner, keep=name)
        return name

    def evict_owner(self, owner: str, keep: str | None = None) -> int:
        """Delete `owner`'s oldest files until they hold at most `key_bytes` together
        (`keep` last of all); returns how many went. Blocking."""
        entries = self._entries(keep, owner)
        total, removed = sum(e[2] for e in entries), 0
        for _, _, size, path in entries:
            if total <= self.key_bytes:
                break
            self._unlink(path)
            total, removed = total - size, removed + 1
        return removed

    def get_owned(self, name: str, who: Principal) -> tuple[bytes, str, float] | None:
        """(data, media type, seconds left) of file `name` when it is live and `who` owns
        it (`Principal.owns`); None otherwise, the same for another key's file as for one
        that is not there. Blocking."""
        if not self.NAME.match(name):
            return None
        owner = self.owner(name)
        if owner is None or not who.owns(owner):
            return None
        return self.get(name)
