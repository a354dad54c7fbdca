"""The image server's settings, read from `HOMELAB_IMAGE_*` environment variables.

The manager passes these from the model's models.json entry (see
`manager.spec.ImageModel`): model, served name, host, port, dtype, device,
cpu_offload, attention_slicing, vae_tiling, sizes, max_n, steps, and the loading options
of `wire.image_options` (offload, quantize, gguf_file, text_encoder_quantize, vae_slicing). The rest
(queue limit, upload limit, warm-up) are the server's own knobs with defaults.

`Settings()` raises `pydantic.ValidationError` on a bad value; `__main__`
names each bad variable (`HomelabSettings.describe`) and exits with code 2.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from wire.image_options import Offload, Quantize, TextQuantize, problems
from wire.model_server import IMAGE_API_KEY_ENV
from wire.settings import HomelabSettings

SIZE_RE = re.compile(r"^([1-9][0-9]{1,4})x([1-9][0-9]{1,4})$")
DEVICE_RE = r"^(cuda(:[0-9]+)?|cpu|mps)$"


def parse_size(text: str) -> tuple[int, int]:
    """'1024x768' -> (1024, 768). Raises ValueError on anything else (no multiple-of-8 check)."""
    match = SIZE_RE.match(text.strip())
    if not match:
        raise ValueError(f"size {text!r} is not of the form WIDTHxHEIGHT, e.g. 1024x1024")
    return int(match.group(1)), int(match.group(2))


class Settings(HomelabSettings):
    """Everything the image server is told at start. Immutable."""

    model_config = SettingsConfigDict(
        env_prefix="HOMELAB_IMAGE_", frozen=True, extra="ignore", populate_by_name=True
    )

    model: str = Field(
        min_length=1,
        max_length=512,
        description="Hugging Face model id or a local folder (diffusers layout, model_index.json).",
    )
    served_name: str = Field(
        default="",
        max_length=128,
        description="The name clients use (`model` in requests, `/v1/models`). Empty: the model value.",
    )
    host: str = Field(default="0.0.0.0", description="Address the server listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the server listens on.")
    dtype: Literal["bf16", "fp16", "fp32"] = Field(
        default="bf16", description="The weights' data type (models.json `dtype`)."
    )
    device: str = Field(
        default="cuda", pattern=DEVICE_RE, description="Torch device (models.json `device`)."
    )
    cpu_offload: bool = Field(
        default=False, description="enable_model_cpu_offload(): the same as offload `model`"
    )
    attention_slicing: bool = Field(default=False, description="enable_attention_slicing()")
    vae_tiling: bool = Field(default=False, description="vae.enable_tiling()")
    vae_slicing: bool = Field(default=False, description="vae.enable_slicing()")
    offload: Offload = Field(
        default="none",
        description="model, sequential, group-block, group-leaf (models.json `offload`)",
    )
    quantize: Quantize = Field(
        default="none", description="The transformer/UNet's quantization (models.json `quantize`)."
    )
    gguf_file: str = Field(
        default="", max_length=1024, description="With quantize gguf: the .gguf file or its URL."
    )
    text_encoder_quantize: TextQuantize = Field(
        default="none", description="The text encoders' quantization (models.json)."
    )
    sizes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["1024x1024"],
        min_length=1,
        description="Comma list of WIDTHxHEIGHT clients may ask for; the first is the default.",
    )
    max_n: int = Field(default=4, ge=1, le=16, description="Most images one request may ask for.")
    steps: int = Field(default=30, ge=1, le=200, description="Default inference steps.")
    max_steps: int = Field(
        default=200,
        ge=1,
        le=200,
        description="Most inference steps a request may ask for (models.json `max_steps`).",
    )
    queue_limit: int = Field(
        default=8,
        ge=0,
        le=1000,
        description="Requests that may wait behind the running one; one more gets 429.",
    )
    max_upload_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        le=512 * 1024 * 1024,
        description="Largest uploaded file (image or mask) in bytes.",
    )
    warmup_steps: int = Field(
        default=1,
        ge=0,
        le=50,
        description="Steps of the warm-up generation run before reporting ready; 0 skips it.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe log records written (and uvicorn's level)."
    )
    api_key: SecretStr | None = Field(
        default=None,
        validation_alias=IMAGE_API_KEY_ENV,  # the contract's name (wire.model_server)
        description=(
            "The upstream key the manager made for this start: every request must send "
            "it as `Authorization: Bearer`. Unset: no key needed."
        ),
    )

    @field_validator("sizes", mode="before")
    @classmethod
    def _split_sizes(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("sizes")
    @classmethod
    def _check_sizes(cls, value: list[str]) -> list[str]:
        for size in value:
            width, height = parse_size(size)
            if width % 8 or height % 8:
                raise ValueError(f"size {size} must have width and height divisible by 8")
        return value

    @model_validator(mode="after")
    def _default_served_name(self) -> Settings:
        if not self.served_name:
            object.__setattr__(self, "served_name", self.model)
        return self

    @model_validator(mode="after")
    def _loading_options(self) -> Settings:
        """The combinations models.json refuses, refused again here (the server may be
        started by hand), with the model named."""
        if self.cpu_offload and self.offload not in ("none", "model"):
            found = [f"cpu_offload cannot be combined with offload {self.offload!r}"]
        else:
            found = problems(
                device=self.device,
                dtype=self.dtype,
                quantize=self.quantize,
                gguf_file=self.gguf_file or None,
                text_encoder_quantize=self.text_encoder_quantize,
                offload=self.load_offload,
            )
        if found:
            raise ValueError(f"model {self.served_name!r}: " + "; ".join(found))
        return self

    @property
    def load_offload(self) -> str:
        """The offloading to apply: `offload`, or 'model' for `cpu_offload`."""
        return "model" if self.cpu_offload and self.offload == "none" else self.offload

    @property
    def size_pairs(self) -> list[tuple[int, int]]:
        """The allowed sizes as (width, height); the first is the default."""
        return [parse_size(s) for s in self.sizes]

    @property
    def max_body_bytes(self) -> int:
        """Largest request body accepted: an image, a mask and the form fields."""
        return 2 * self.max_upload_bytes + 1024 * 1024
