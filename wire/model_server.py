"""What the manager and the proxy say to the model servers the manager launches.

- The **upstream key**: a new key for every start of a server (``manager.runtime``),
  passed in the environment variable of its type, `UPSTREAM_KEY_ENV`: vLLM reads
  ``VLLM_API_KEY`` (vLLM's own name), homelab-ai's image server `IMAGE_API_KEY_ENV`
  (``imageserver.settings``), llama.cpp's server `LLAMA_API_KEY_ENV`. All then refuse every
  path without ``Authorization: Bearer <key>`` (vLLM through the guard middleware the
  manager launches it with, ``manager.model_guard``; llama.cpp answers ``/health`` and
  ``/v1/health`` without it); the proxy gets the key in its lease.
- The image server's ``GET /health`` body, `ImageHealth` (written by ``imageserver.api``,
  read by the manager's readiness probe, ``manager.health``): 200 while loading or ready,
  503 once failed; once ready it says how the pipeline was loaded (``wire.image_options``).
- The audio server's ``GET /health`` body, `AudioHealth` (written by ``audioserver.api``,
  read by ``manager.health``): as the image server's, plus the model's type (stt or tts);
  open without the upstream key; its ``GET /v1/progress`` body, `AudioProgress`.
- The image server's ``GET /v1/progress`` body, `ImageProgress` (written by
  ``imageserver.api`` from its step meter, read by the proxy's MCP calls while a picture
  is made, ``proxy.mcp.calls``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from wire.image_options import ImageLoaded

VLLM_API_KEY_ENV = "VLLM_API_KEY"
"""vLLM's OpenAI server refuses every path without this key (vLLM's own variable, read
by its ``/v1`` check and by ``manager.model_guard`` for the rest)."""
IMAGE_API_KEY_ENV = "HOMELAB_IMAGE_API_KEY"
"""The image server refuses every path without this key (``imageserver.upstream_key``)."""
AUDIO_API_KEY_ENV = "HOMELAB_AUDIO_API_KEY"
"""The audio server (stt and tts models) refuses every path but ``/health`` without this
key (``audioserver``)."""
UPSTREAM_KEY_ENV = {
    "text": VLLM_API_KEY_ENV,
    "embedding": VLLM_API_KEY_ENV,
    "image": IMAGE_API_KEY_ENV,
    "stt": AUDIO_API_KEY_ENV,
    "tts": AUDIO_API_KEY_ENV,
}
"""The variable that carries a server's upstream key, by model type."""
LLAMA_API_KEY_ENV = "LLAMA_API_KEY"
"""llama.cpp's ``llama-server`` (a text model's other backend) refuses every path but
``/health`` and ``/v1/health`` without this key (llama.cpp's own variable for ``--api-key``); it replaces `VLLM_API_KEY_ENV`."""

ImageServerStatus = Literal["loading", "ready", "failed"]


class ImageHealth(BaseModel):
    """``GET /health`` of the image server: whether its pipeline is loaded. Open without
    the upstream key (it says nothing else)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    status: ImageServerStatus
    error: str | None = None
    """Why loading failed (status ``failed``)."""
    model: str = ""
    """The served name."""
    loaded: ImageLoaded | None = None
    """Once ready: how the pipeline was loaded (quantization, offloading; `ImageLoaded`)."""

    @property
    def http_status(self) -> int:
        """503 once failed, else 200."""
        return 503 if self.status == "failed" else 200


class AudioHealth(BaseModel):
    """``GET /health`` of the audio server (``audioserver``): whether its model (a
    faster-whisper model for ``stt``, a Piper voice for ``tts``) is loaded. Open without
    the upstream key (it says nothing else); 503 once failed."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    status: ImageServerStatus
    error: str | None = None
    """Why loading failed (status ``failed``)."""
    model: str = ""
    """The served name."""
    type: Literal["stt", "tts"]
    """What the model does: transcribe (``stt``) or speak (``tts``)."""

    @property
    def http_status(self) -> int:
        """503 once failed, else 200."""
        return 503 if self.status == "failed" else 200


class AudioProgress(BaseModel):
    """``GET /v1/progress`` of the audio server: the request running now, in steps: a
    speech answer's sentences spoken of all its sentences, a transcription's whole
    seconds heard of the audio's (all zero when idle)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    running: bool = False
    step: int = 0
    steps: int = 0

    def step_of(self) -> tuple[int, int] | None:
        """(step, steps) while a request is under way with a step done, else None."""
        if self.running and 0 < self.step <= self.steps:
            return self.step, self.steps
        return None


class ImageProgress(BaseModel):
    """``GET /v1/progress`` of the image server: the diffusion steps of the picture being
    made now (all zero when idle, loading, or the pipeline reports none)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    running: bool = False
    step: int = 0
    """Finished steps of the current picture."""
    steps: int = 0
    """That picture's total steps."""

    def step_of(self) -> tuple[int, int] | None:
        """(step, steps) while a picture is under way with a step done, else None."""
        if self.running and 0 < self.step <= self.steps:
            return self.step, self.steps
        return None
