"""Text to speech: the `Speaker` protocol and its Piper implementation.

`Speaker.speak(job)` is a generator run on the worker thread: it yields the 16-bit mono
PCM of each sentence as soon as that sentence is synthesised (Piper splits the text into
sentences), so the answer can start before the rest is spoken.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from audioserver.errors import InvalidRequest, LoadFailed
from audioserver.meter import Meter
from audioserver.settings import Settings
from wire.audio import OPENAI_VOICES


@dataclass(frozen=True)
class Voice:
    id: str
    name: str
    language: str
    sample_rate: int
    speaker: int | None = None
    """The speaker's number in a multi-speaker model (None: its only one)."""

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "language": self.language,
            "sample_rate": self.sample_rate,
        }


@dataclass(frozen=True)
class SpeakJob:
    text: str
    voice: Voice
    speed: float = 1.0


class Speaker(Protocol):
    voices: list[Voice]
    """The first is the default."""
    meter: Meter
    """Sentences spoken of the text's sentences, while `speak` runs."""

    def speak(self, job: SpeakJob) -> Iterator[bytes]:
        """Each sentence's 16-bit mono PCM at the voice's rate. Blocks."""
        ...


def pick_voice(voices: list[Voice], wanted: str) -> Voice:
    """The voice named `wanted` (its id or name), or the default for an OpenAI voice name.
    Raises InvalidRequest naming the voices there are."""
    for voice in voices:
        if wanted in (voice.id, voice.name):
            return voice
    if wanted in OPENAI_VOICES:
        return voices[0]
    raise InvalidRequest(
        f"unknown voice {wanted!r}; this model has: {', '.join(v.id for v in voices)} "
        f"(OpenAI's names speak with {voices[0].id})",
        param="voice",
    )


class PiperSpeaker:
    """A Piper voice: its .onnx model with the .onnx.json config beside it."""

    def __init__(self, settings: Settings) -> None:
        try:
            from piper import PiperVoice
        except ImportError as exc:
            raise LoadFailed(f"piper-tts is not installed: {exc}") from exc
        model = Path(settings.model)
        config = Path(f"{model}.json")
        if not model.is_file() or not config.is_file():
            raise LoadFailed(f"a Piper voice needs {model} and {config}; one is missing")
        try:
            self._voice = PiperVoice.load(model, config, use_cuda=settings.device == "cuda")
            meta = json.loads(config.read_text(encoding="utf-8"))
        except Exception as exc:
            raise LoadFailed(f"cannot load the Piper voice {model}: {exc}") from exc
        rate = int(self._voice.config.sample_rate)
        self._length_scale = float(self._voice.config.length_scale or 1.0)
        language = str((meta.get("language") or {}).get("code") or "")
        stem = model.name.removesuffix(".onnx")
        name = str(meta.get("dataset") or stem)
        speakers: dict[str, int] = meta.get("speaker_id_map") or {}
        self.meter = Meter()
        self.voices = [Voice(stem, name, language, rate)] + [
            Voice(f"{stem}:{speaker}", speaker, language, rate, number)
            for speaker, number in sorted(speakers.items(), key=lambda kv: kv[1])
        ]

    def speak(self, job: SpeakJob) -> Iterator[bytes]:
        from piper import SynthesisConfig

        config = SynthesisConfig(
            speaker_id=job.voice.speaker, length_scale=self._length_scale / job.speed
        )
        # Piper splits the text into sentences as it speaks; asking first how it will
        # (espeak-ng's phonemes, quick) gives the meter its total.
        self.meter.begin(sum(1 for phonemes in self._voice.phonemize(job.text) if phonemes))
        try:
            for number, chunk in enumerate(self._voice.synthesize(job.text, config), 1):
                self.meter.advance(number)
                yield chunk.audio_int16_bytes
        finally:
            self.meter.end()

    def warm_up(self) -> None:
        for _ in self.speak(SpeakJob("Ready.", self.voices[0])):
            pass
