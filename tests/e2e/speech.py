"""The `speech` tier's parts: the small real speech models (./setup.sh deps makes them:
scripts/prepare_audio_models.py), the audio server's stack, espeak-ng and sox.

- ``HOMELAB_STT_MODEL_DIR``: Whisper tiny.en for faster-whisper (default
  ``$HOMELAB_STATE_DIR/models/whisper-tiny-en``);
- ``HOMELAB_TTS_VOICE``: Piper's en_US-joe-medium voice (default
  ``$HOMELAB_STATE_DIR/models/piper-joe-medium/en_US-joe-medium.onnx``).

`speech_parts()` returns them or SKIPS with the fix (the tier gate makes a skip fail CI).
`word_error_rate` is the usual WER: word-level edit distance over the reference's words,
after lower-casing and dropping punctuation.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import state_dir


@dataclass(frozen=True)
class SpeechParts:
    stt_model: Path
    tts_voice: Path
    espeak: str
    sox: str


def speech_parts() -> SpeechParts:
    """The real models and programs, or a skip naming what is missing and the fix."""
    pytest.importorskip(
        "faster_whisper", reason="faster-whisper is not installed (pip install -e '.[audio]')"
    )
    pytest.importorskip("piper", reason="piper-tts is not installed (pip install -e '.[audio]')")
    models = state_dir() / "models"
    stt = Path(os.environ.get("HOMELAB_STT_MODEL_DIR", models / "whisper-tiny-en"))
    tts = Path(
        os.environ.get("HOMELAB_TTS_VOICE", models / "piper-joe-medium" / "en_US-joe-medium.onnx")
    )
    if not (stt / "model.bin").is_file() or not tts.is_file():
        pytest.skip(f"no speech models at {stt} and {tts}: run ./setup.sh deps")
    espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
    if espeak is None or sox is None:
        pytest.skip("espeak-ng or sox is missing: apt-get install espeak-ng sox (./setup.sh deps)")
    return SpeechParts(stt, tts, espeak, sox)


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_error_rate(reference: str, heard: str) -> float:
    ref, hyp = words(reference), words(heard)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)] / max(1, len(ref))
