"""The audio server's settings, read from `HOMELAB_AUDIO_*` environment variables.

The manager passes these from the model's models.json entry (`manager.spec.SttModel`,
`manager.spec.TtsModel`): type, model, served name, host, port, device, compute type.
The rest (queue and upload limits, the longest input) are the server's own knobs with
defaults. `Settings()` raises `pydantic.ValidationError` on a bad value; `__main__` names
each bad variable (`HomelabSettings.describe`) and exits with code 2.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from wire.model_server import AUDIO_API_KEY_ENV
from wire.settings import HomelabSettings

MAX_UPLOAD_BYTES = 25 * 1024 * 1024
"""OpenAI's limit on a transcription upload."""
MAX_INPUT_CHARS = 4096
"""OpenAI's limit on the text of one speech request."""


class Settings(HomelabSettings):
    """Everything the audio server is told at start. Immutable."""

    model_config = SettingsConfigDict(
        env_prefix="HOMELAB_AUDIO_", frozen=True, extra="ignore", populate_by_name=True
    )

    type: Literal["stt", "tts"] = Field(
        description="`stt`: a faster-whisper model transcribes; `tts`: a Piper voice speaks."
    )
    model: str = Field(
        min_length=1,
        max_length=512,
        description=(
            "stt: a CTranslate2 Whisper folder (model.bin, tokenizer.json, ...) or a "
            "faster-whisper size name; tts: a Piper voice's .onnx file (its .onnx.json beside it)."
        ),
    )
    served_name: str = Field(
        default="",
        max_length=128,
        description="The name clients use (`model` in requests). Empty: the model value.",
    )
    host: str = Field(default="0.0.0.0", description="Address the server listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the server listens on.")
    device: Literal["cpu", "cuda"] = Field(
        default="cpu", description="Where the model runs (models.json `device`)."
    )
    compute_type: str = Field(
        default="default",
        pattern=r"^[a-z0-9_]{1,32}$",
        description=(
            "stt: CTranslate2's compute type (`int8`, `float16`, `int8_float16`, ...); "
            "`default`: int8 on the CPU, float16 on CUDA."
        ),
    )
    queue_limit: int = Field(
        default=8,
        ge=0,
        le=1000,
        description="Requests that may wait behind the running one; one more gets 429.",
    )
    max_upload_bytes: int = Field(
        default=MAX_UPLOAD_BYTES,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest audio file a transcription may upload (bytes).",
    )
    max_input_chars: int = Field(
        default=MAX_INPUT_CHARS,
        ge=1,
        le=1_000_000,
        description="Longest text one speech request may send (characters).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe log records written (and uvicorn's level)."
    )
    api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AUDIO_API_KEY_ENV,  # the contract's name (wire.model_server)
        description=(
            "The upstream key the manager made for this start: every request but "
            "`GET /health` must send it as `Authorization: Bearer`. Unset: no key needed."
        ),
    )

    @model_validator(mode="after")
    def _default_served_name(self) -> Settings:
        if not self.served_name:
            object.__setattr__(self, "served_name", self.model)
        return self

    @property
    def max_body_bytes(self) -> int:
        """Largest request body accepted: the upload and the form fields."""
        return self.max_upload_bytes + 1024 * 1024
