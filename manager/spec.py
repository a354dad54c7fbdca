"""The models.json catalogue: its schema, and loading it strictly.

`models.json` is a flat JSON object keyed by model name::

    {"llama3-8b": {"type": "text", "container": "vllm-llama3-8b", "port": 8001,
                   "image": "vllm/vllm-openai:v0.11.0", "model": "meta-llama/..."}}

A `"$schema"` key is allowed (editors use it) and ignored. Every other key is a
model name. Unknown fields are refused, so a typo fails at start-up instead of
being silently ignored. `load_catalogue` raises `CatalogueError`, whose message
names the file, the key path and the reason.

Names and container names are checked against conservative patterns because
they reach Docker (container names, labels) and process arguments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeGuard

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from manager.errors import CatalogueError
from manager.tool_calls import ToolCalls, args_problem
from wire.image_options import Offload, Quantize, TextQuantize, park_problem, problems

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""Model and container names: what Docker accepts, without a leading separator."""

IMAGE_PATTERN = r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]{1,128})?(@sha256:[a-f0-9]{64})?$"
"""A Docker image reference. `:latest` and untagged references are refused separately."""

Seconds = Annotated[float, Field(gt=0, le=24 * 3600)]

START_TIMEOUT = (
    "Seconds from start to ready before the start counts as failed; a first start "
    "includes downloading the weights."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Warm(_Strict):
    """models.json ``warm``: the model may be kept warm in host memory instead of stopped."""

    level: Literal[1, 2] = Field(
        default=1,
        description=(
            "vLLM's sleep level: 1 moves the weights to host memory (wakes in about the time "
            "of a PCIe copy of them); 2 drops them (little host memory; a wake reloads them "
            "from disk, still without a new process, CUDA graphs or compilation). An image "
            "pipeline is parked on the CPU whatever the level."
        ),
        examples=[1],
    )
    host_memory_mib: int | None = Field(
        default=None,
        ge=0,
        le=10_000_000,
        description=(
            "Host memory (MiB) the sleeping server holds. Unset: learned from the server's "
            "resident memory the first time it sleeps; until then it may sleep only alone in "
            "the host-memory budget."
        ),
        examples=[17000],
    )


class _ModelBase(_Strict):
    container: str = Field(
        pattern=NAME_PATTERN,
        description="Container name (Docker runtime) or process label (process runtime). Unique.",
        examples=["vllm-llama3-8b"],
    )
    port: int = Field(
        ge=1024,
        le=65535,
        description=(
            "Host port the model server is published on; the proxy connects to it directly, "
            "so the GPU PC's firewall must let the server reach it. Unique."
        ),
        examples=[8001],
    )
    image: str = Field(
        pattern=IMAGE_PATTERN,
        description="Docker image with a pinned tag or digest, never `latest`.",
        examples=["vllm/vllm-openai:v0.32.0"],
    )
    model: str = Field(
        min_length=1,
        max_length=512,
        description="Hugging Face model id or a local path (process runtime) the server loads.",
        examples=["meta-llama/Meta-Llama-3-8B-Instruct"],
    )
    start_timeout: Seconds = Field(default=900.0, description=START_TIMEOUT, examples=[1800])
    idle_ttl: Seconds | None = Field(
        default=None,
        description=(
            "Stop the model after this many idle seconds, resident or asleep in host "
            "memory (`warm`). Unset: never."
        ),
        examples=[3600],
    )
    gpu: bool = Field(
        default=True,
        description="Request the GPU for the container (Docker runtime); false runs it without one.",
        examples=[False],
    )
    env: dict[str, str] = Field(
        default={},
        description="Extra environment variables for the model server.",
        examples=[{"HF_HUB_OFFLINE": "1"}],
    )
    command: list[str] | None = Field(
        default=None,
        description=(
            "Process runtime only: program and leading arguments to run instead of the "
            "type's default server module. The type's arguments are appended."
        ),
        examples=[["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]],
    )
    description: str = Field(
        default="",
        max_length=500,
        description="One line about the model for people: /v1/models and the UI's /models show it.",
        examples=["Llama 3 8B Instruct, general chat."],
    )
    max_in_flight: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description=(
            "Most requests the model server is given at once; more wait in the manager's "
            "queue (counted against its queue limit and timeout), never reaching the server "
            "to be refused. Image models default to 9: the image server runs one generation "
            "and lets 8 wait."
        ),
        examples=[64],
    )

    gpu_memory_mib: int | None = Field(
        default=None,
        ge=0,
        le=10_000_000,
        description=(
            "GPU memory (MiB) the model takes while resident: weights, cache and working "
            "memory. Models whose declarations fit the manager's GPU budget together stay "
            "resident together; a vLLM model (text or embedding) on the GPU gets this share of the card as vLLM's "
            "`--gpu-memory-utilization` unless its `args` set one (which must then agree). "
            "0: it takes none. Unset: it runs alone, as does every model without a budget."
        ),
        examples=[9500],
    )
    priority: int = Field(
        default=0,
        ge=-100,
        le=100,
        description=(
            "Among models waiting to start, the higher goes first (a waiting model is "
            "overtaken at most twice); when the manager must make room, a resident of lower "
            "priority is stopped before one of higher priority used as long ago."
        ),
        examples=[10],
    )
    pinned: bool = Field(
        default=False,
        description=(
            "Started when the manager starts and never stopped to make room (an explicit "
            "stop still stops it). Needs `gpu_memory_mib` and a GPU budget; not with `idle_ttl`."
        ),
        examples=[True],
    )
    warm: Warm | None = Field(
        default=None,
        description=(
            "Keep the model warm in host memory when the GPU is wanted for another (vLLM's "
            "sleep mode; an image pipeline parked on the CPU), when the manager's policy finds "
            'that cheaper than stopping it (docs/architecture.md, "Three tiers"). vLLM on the '
            "GPU gets `--enable-sleep-mode`. Not for llama.cpp, speech models (stt, tts), nor "
            "with `cpu_offload` or an image `offload` (quantized image models park). Unset: the "
            "model is stopped."
        ),
        examples=[{"level": 1, "host_memory_mib": 17000}],
    )

    @field_validator("image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        last = value.rsplit("/", 1)[-1]
        if "@sha256:" not in value and ":" not in last:
            raise ValueError(
                "image must be pinned to a tag or digest, e.g. vllm/vllm-openai:v0.11.0"
            )
        if last.endswith(":latest"):
            raise ValueError("image must not use the 'latest' tag; pin a version")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key.replace("_", "a").isalnum() or key[0].isdigit():
                raise ValueError(f"environment variable name {key!r} is not valid")
        return value


class TextModel(_ModelBase):
    """A text model served by vLLM's OpenAI server, or by llama.cpp's (`backend`)."""

    type: Literal["text"] = Field(
        description="`text`: an OpenAI-compatible chat and completions server (`backend`).",
        examples=["text"],
    )
    backend: Literal["vllm", "llama.cpp"] = Field(
        default="vllm",
        description=(
            "The server: `vllm` (vLLM's OpenAI server; `model` is a Hugging Face id or a "
            "folder) or `llama.cpp` (llama.cpp's `llama-server`; `model` is a GGUF file)."
        ),
        examples=["llama.cpp"],
    )
    args: list[str] = Field(
        default=[],
        description="Extra arguments for the backend's server (vLLM's or llama-server's), as they are.",
        examples=[["--max-model-len", "8192", "--gpu-memory-utilization", "0.90"]],
    )
    context_size: int | None = Field(
        default=None,
        ge=128,
        le=10_000_000,
        description=(
            "llama.cpp only: the context in tokens (llama-server's `-c`); with `gpu_layers` it "
            "decides the estimated GPU footprint. Unset: 4096."
        ),
        examples=[8192],
    )
    gpu_layers: int | None = Field(
        default=None,
        ge=0,
        le=10_000,
        description=(
            "llama.cpp only: layers offloaded to the GPU (llama-server's `-ngl`). Unset: all "
            "of them when `gpu` is true, none when it is false."
        ),
        examples=[20],
    )
    vision: bool = Field(
        default=False,
        description=(
            "The model takes images in chat messages (OpenAI `image_url` content parts). "
            "Shown as `vision` in /v1/models; the MCP tool img2txt offers only these models."
        ),
        examples=[True],
    )
    start_timeout: Seconds = Field(default=900.0, description=START_TIMEOUT, examples=[1800])
    tool_calls: ToolCalls | None = Field(
        default=None,
        validate_default=True,  # raw tool flags in `args` are refused even without it
        description=(
            "How the model writes tool calls (OpenAI `tools`/`tool_choice`): vLLM gets "
            "`--enable-auto-tool-choice --tool-call-parser PARSER` (and `--chat-template`); "
            "`args` must not set these. Unset: vLLM refuses requests that let the model call "
            "tools (400)."
        ),
        examples=[{"parser": "hermes"}],
    )

    @field_validator("tool_calls")
    @classmethod
    def _tool_calls_fit(cls, value: ToolCalls | None, info: ValidationInfo) -> ToolCalls | None:
        backend = str(info.data.get("backend", "vllm"))
        problem = (value.backend_problem(backend) if value else None) or args_problem(
            value, info.data.get("args", []), backend
        )
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _backend_fields(self) -> TextModel:
        if self.backend == "vllm":
            for key in ("context_size", "gpu_layers"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} is for backend llama.cpp (vLLM: put it in args)")
            return self
        if self.warm is not None:
            raise ValueError("warm is not supported with backend llama.cpp (no sleep mode)")
        if not self.model.lower().endswith(".gguf"):
            raise ValueError("a llama.cpp model names its GGUF file: model must end in .gguf")
        if self.vision:
            raise ValueError("vision is not supported with backend llama.cpp")
        return self

    @property
    def llama_context(self) -> int:
        """llama.cpp: the context size it runs with (`context_size`, default 4096)."""
        return self.context_size or LLAMA_DEFAULT_CONTEXT

    @property
    def llama_gpu_layers(self) -> int:
        """llama.cpp: the `-ngl` it runs with (`gpu_layers`; unset: all when `gpu`, else 0)."""
        if self.gpu_layers is not None:
            return self.gpu_layers
        return LLAMA_ALL_LAYERS if self.gpu else 0


LLAMA_DEFAULT_CONTEXT = 4096
"""A llama.cpp model's context when its `context_size` is unset."""
LLAMA_ALL_LAYERS = 999
"""`-ngl` for "every layer": llama.cpp offloads at most the layers the model has."""


class EmbeddingModel(_ModelBase):
    """An embeddings model served by vLLM's pooling runner (/v1/embeddings)."""

    type: Literal["embedding"] = Field(
        description=(
            "`embedding`: a vLLM OpenAI server on its pooling runner (`--runner pooling`, "
            "added by the manager); it answers /v1/embeddings only."
        ),
        examples=["embedding"],
    )
    args: list[str] = Field(
        default=[],
        description=(
            "Extra vLLM arguments, passed as they are; not `--runner` (the type sets it)."
        ),
        examples=[["--max-model-len", "512"]],
    )

    @field_validator("args")
    @classmethod
    def _no_runner(cls, value: list[str]) -> list[str]:
        if any(a == "--runner" or a.startswith("--runner=") for a in value):
            raise ValueError(
                "an embedding model runs on vLLM's pooling runner: drop --runner from args "
                "(the manager passes --runner pooling)"
            )
        return value


ImageSize = Annotated[str, Field(pattern=r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$")]


class ImageModel(_ModelBase):
    """An image model served by homelab-ai's diffusers image server."""

    type: Literal["image"] = Field(
        description="`image`: homelab-ai's diffusers image server (the OpenAI images API).",
        examples=["image"],
    )
    dtype: Literal["bf16", "fp16", "fp32"] = Field(
        default="bf16",
        description=(
            "Precision the pipeline loads in. Prefer bf16 on RTX 30xx and newer: "
            "SDXL's VAE and the FLUX/Qwen transformers overflow in fp16."
        ),
        examples=["fp16"],
    )
    device: str = Field(
        default="cuda",
        pattern=r"^(cuda(:[0-9]+)?|cpu|mps)$",
        description="Torch device. The server never falls back: no GPU for `cuda` fails the start.",
        examples=["cpu"],
    )
    cpu_offload: bool = Field(
        default=False,
        description=(
            "enable_model_cpu_offload(): components wait in system RAM and move to the GPU "
            "only while they run. Less GPU memory, somewhat slower."
        ),
        examples=[True],
    )
    offload: Offload = Field(
        default="none",
        description=(
            "Where weights wait while unused: `model` (as `cpu_offload`: whole components "
            "move to the GPU while they run), `sequential` (layer by layer: least GPU memory, "
            "slowest; CUDA only), `group-block` / `group-leaf` (diffusers' group offloading "
            "of every model component by block or by leaf layer: little GPU memory, needs "
            "the weights in system RAM). `none`: all on the device (or `cpu_offload`)."
        ),
        examples=["group-leaf"],
    )
    quantize: Quantize = Field(
        default="none",
        description=(
            "How the transformer/UNet is loaded: `gguf` (the GGUF file `gguf_file`), "
            "`torchao-int8`, `torchao-int4` (CUDA only), `quanto-int8`, `quanto-int4`, "
            "`bnb-nf4` (bitsandbytes 4-bit, CUDA only). `none`: in `dtype`."
        ),
        examples=["gguf"],
    )
    gguf_file: str | None = Field(
        default=None,
        min_length=6,
        max_length=1024,
        description=(
            "With `quantize` `gguf`: the transformer/UNet as a GGUF file, a local path or a "
            "Hugging Face file URL (https://huggingface.co/OWNER/REPO/blob/main/FILE.gguf); "
            "the rest of the pipeline comes from `model`. Its name's quantization type "
            "(Q4_K_S, Q8_0, ...) chooses the footprint estimate."
        ),
        examples=["https://huggingface.co/city96/FLUX.1-dev-gguf/blob/main/flux1-dev-Q4_K_S.gguf"],
    )
    text_encoder_quantize: TextQuantize = Field(
        default="none",
        description=(
            "How the text encoders (every `text_encoder*` component) are loaded: as "
            "`quantize`, without `gguf`."
        ),
        examples=["bnb-nf4"],
    )
    vae_slicing: bool = Field(
        default=False,
        description="vae.enable_slicing(): decode a batch one image at a time; less memory with n > 1.",
        examples=[True],
    )
    attention_slicing: bool = Field(
        default=False,
        description="enable_attention_slicing(): attention in slices; a little less memory, slower.",
        examples=[True],
    )
    vae_tiling: bool = Field(
        default=False,
        description="vae.enable_tiling(): decode large images in tiles; saves memory at 1024x1024 and up.",
        examples=[True],
    )
    sizes: list[ImageSize] = Field(
        default=["1024x1024"],
        min_length=1,
        description=(
            "Sizes clients may ask for, WIDTHxHEIGHT with both multiples of 8; the first is "
            "the default, and a size not listed is refused."
        ),
        examples=[["1024x1024", "1152x896", "896x1152"]],
    )
    max_n: int = Field(
        default=4, ge=1, le=16, description="Most images one request may ask for.", examples=[2]
    )
    steps: int = Field(
        default=30,
        ge=1,
        le=200,
        description="Default inference steps; a request may ask for others.",
        examples=[4],
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=200,
        description=(
            "Most inference steps a request may ask for (more are refused with 400), so one "
            "request cannot hold the GPU for long. Unset: 200."
        ),
        examples=[50],
    )
    start_timeout: Seconds = Field(default=1200.0, description=START_TIMEOUT, examples=[1800])
    max_in_flight: int = Field(
        default=9,
        ge=1,
        le=100_000,
        description=(
            "Most requests the image server is given at once (default: the one it runs plus "
            "the 8 its queue holds); more wait in the manager's queue."
        ),
        examples=[2],
    )

    @model_validator(mode="after")
    def _steps_within_max(self) -> ImageModel:
        parking = park_problem(self.load_offload)
        if self.warm is not None and parking is not None:
            named = " with cpu_offload" if self.cpu_offload and self.offload == "none" else ""
            raise ValueError(f"warm is not possible{named}: {parking}")
        if self.max_steps is not None and self.steps > self.max_steps:
            raise ValueError(f"steps ({self.steps}) must not exceed max_steps ({self.max_steps})")
        return self

    @model_validator(mode="after")
    def _loading_options(self) -> ImageModel:
        if self.cpu_offload and self.offload not in ("none", "model"):
            raise ValueError(
                f"cpu_offload is offload 'model'; it cannot be combined with offload {self.offload!r}"
            )
        found = problems(
            device=self.device,
            dtype=self.dtype,
            quantize=self.quantize,
            gguf_file=self.gguf_file,
            text_encoder_quantize=self.text_encoder_quantize,
            offload=self.load_offload,
        )
        if found:
            raise ValueError("; ".join(found))
        return self

    @property
    def load_offload(self) -> str:
        """The offloading the server applies: `offload`, or 'model' for `cpu_offload`."""
        return "model" if self.cpu_offload and self.offload == "none" else self.offload

    @field_validator("sizes")
    @classmethod
    def _multiple_of_8(cls, value: list[str]) -> list[str]:
        for size in value:
            w, h = (int(x) for x in size.split("x"))
            if w % 8 or h % 8:
                raise ValueError(f"size {size} must have width and height divisible by 8")
        return value


class _AudioModel(_ModelBase):
    """A speech model served by homelab-ai's audio server (``audioserver``)."""

    device: Literal["cpu", "cuda"] = Field(
        default="cuda",
        description=(
            "Where the model runs. The server never falls back: no GPU for `cuda` fails the start."
        ),
        examples=["cpu"],
    )
    start_timeout: Seconds = Field(default=600.0, description=START_TIMEOUT, examples=[300])
    max_in_flight: int = Field(
        default=9,
        ge=1,
        le=100_000,
        description=(
            "Most requests the audio server is given at once (default: the one it runs plus "
            "the 8 its queue holds); more wait in the manager's queue."
        ),
        examples=[2],
    )

    warm: SkipJsonSchema[Warm | None] = None
    """Refused (`_no_warm`) and left out of the schema: there is nothing to keep warm with."""

    @field_validator("warm")
    @classmethod
    def _no_warm(cls, value: Warm | None) -> Warm | None:
        if value is not None:
            raise ValueError(
                "a speech model cannot be kept warm: the audio server has no sleep or park "
                "route (drop warm; it is stopped when the GPU is wanted)"
            )
        return value


class SttModel(_AudioModel):
    """A speech-to-text model: faster-whisper (a CTranslate2 Whisper model)."""

    type: Literal["stt"] = Field(
        description=(
            "`stt`: speech to text on homelab-ai's audio server (faster-whisper): "
            "/v1/audio/transcriptions and /v1/audio/translations."
        ),
        examples=["stt"],
    )
    compute_type: str = Field(
        default="default",
        pattern=r"^[a-z0-9_]{1,32}$",
        description=(
            "CTranslate2's compute type (`int8`, `float16`, `int8_float16`, ...). "
            "`default`: int8 on the CPU, float16 on CUDA."
        ),
        examples=["int8_float16"],
    )


class TtsModel(_AudioModel):
    """A text-to-speech model: a Piper voice (an .onnx file with its .onnx.json beside it)."""

    type: Literal["tts"] = Field(
        description=(
            "`tts`: text to speech on homelab-ai's audio server (Piper): /v1/audio/speech "
            "and /v1/audio/voices."
        ),
        examples=["tts"],
    )
    device: Literal["cpu", "cuda"] = Field(
        default="cpu",
        description=(
            "Where the voice runs: Piper speaks faster than real time on the CPU; `cuda` "
            "needs onnxruntime-gpu in the image."
        ),
        examples=["cuda"],
    )

    @field_validator("model")
    @classmethod
    def _onnx(cls, value: str) -> str:
        if not value.endswith(".onnx"):
            raise ValueError(
                "a Piper voice is its .onnx file (with the .onnx.json beside it): model must "
                "end in .onnx"
            )
        return value


AudioModel = SttModel | TtsModel
"""The specs the audio server serves."""


LanguageModel = TextModel | EmbeddingModel
"""The specs a language-model server serves (`isinstance(spec, LanguageModel)`): vLLM, or
llama.cpp's llama-server for a text model with `backend` llama.cpp; `served_by_vllm` tells
which."""


def served_by_vllm(spec: object) -> TypeGuard[LanguageModel]:
    """vLLM serves `spec`: an embedding model, or a text model on the `vllm` backend
    (its launch arguments, `--gpu-memory-utilization` share and readiness are vLLM's)."""
    return isinstance(spec, EmbeddingModel) or (
        isinstance(spec, TextModel) and spec.backend == "vllm"
    )


AnyModel = TextModel | ImageModel | EmbeddingModel | SttModel | TtsModel
"""Any models.json entry."""


ModelSpec = Annotated[AnyModel, Field(discriminator="type")]


class Catalogue(BaseModel):
    """All models, keyed by name. Immutable once loaded."""

    model_config = ConfigDict(frozen=True)

    models: dict[str, AnyModel]
    source: str = "<memory>"
    gpu_budget_mib: int | None = None
    """The file's ``$gpu_budget_mib``: the GPU memory the models may share (MiB); the
    manager's HOMELAB_GPU_BUDGET_MIB overrides it (`manager.budget`)."""
    estimated: dict[str, str] = {}
    """Models whose ``gpu_memory_mib`` the manager filled in, and how (an image model's
    from its options or its learned footprint, `manager.budget.with_image_estimates`)."""

    def get(self, name: str) -> AnyModel | None:
        return self.models.get(name)

    def names(self) -> list[str]:
        return sorted(self.models)


_ENTRIES = TypeAdapter(dict[Annotated[str, Field(pattern=NAME_PATTERN)], ModelSpec])


def parse_catalogue(data: object, source: str = "<memory>") -> Catalogue:
    """Validate already-decoded JSON. Raises CatalogueError naming source, key and reason."""
    if not isinstance(data, dict):
        raise CatalogueError(source, "", "the top level must be a JSON object keyed by model name")
    budget = _catalogue_budget(data, source)
    entries = {k: v for k, v in data.items() if not k.startswith("$")}
    if not entries:
        raise CatalogueError(source, "", "no models are defined")
    try:
        models = _ENTRIES.validate_python(entries)
    except ValidationError as exc:
        err = exc.errors()[0]
        # A bad model *name* is reported at the name, without pydantic's '[key]' marker.
        loc = [str(p) for p in err["loc"] if p != "[key]"]
        # A discriminated union puts the tag (the type) in the path: drop it.
        if len(loc) > 1 and loc[1] in ("text", "image", "embedding", "stt", "tts"):
            loc.pop(1)
        raise CatalogueError(source, ".".join(loc), err["msg"]) from exc
    _check_unique(models, "container", source)
    _check_unique(models, "port", source)
    return Catalogue(models=models, source=source, gpu_budget_mib=budget)


CATALOGUE_KEYS = {
    "$schema": "A JSON Schema reference for editors; ignored.",
    "$gpu_budget_mib": (
        "GPU memory (MiB) the models may share; HOMELAB_GPU_BUDGET_MIB overrides it. "
        "Unset: the card's total from NVML less HOMELAB_GPU_RESERVE_MIB, or one model at a "
        "time without NVML."
    ),
}
"""The keys starting with ``$``: settings of the file, not models."""


def _catalogue_budget(data: dict[str, Any], source: str) -> int | None:
    for key in data:
        if key.startswith("$") and key not in CATALOGUE_KEYS:
            raise CatalogueError(
                source, key, f"unknown setting; the known ones are {', '.join(CATALOGUE_KEYS)}"
            )
    value = data.get("$gpu_budget_mib")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000_000:
        raise CatalogueError(
            source,
            "$gpu_budget_mib",
            f"must be a whole number of MiB from 1 to 10000000, not {value!r}",
        )
    return value


def _check_unique(models: dict[str, AnyModel], field: str, source: str) -> None:
    seen: dict[object, str] = {}
    for name, spec in models.items():
        value = getattr(spec, field)
        if value in seen:
            raise CatalogueError(
                source, f"{name}.{field}", f"{value!r} is already used by model {seen[value]!r}"
            )
        seen[value] = name


def load_catalogue(path: str | Path) -> Catalogue:
    """Read and validate a models.json file. Raises CatalogueError on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogueError(str(path), "", f"cannot be read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogueError(
            str(path), "", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    return parse_catalogue(data, source=str(path))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of models.json, generated from the pydantic models."""
    schema = _ENTRIES.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "homelab-ai models.json"
    schema["description"] = "Models the manager can run, keyed by model name."
    props = schema.setdefault("properties", {})
    props["$schema"] = {"type": "string", "description": CATALOGUE_KEYS["$schema"]}
    props["$gpu_budget_mib"] = {
        "type": "integer",
        "minimum": 1,
        "maximum": 10_000_000,
        "description": CATALOGUE_KEYS["$gpu_budget_mib"],
        "examples": [23000],
    }
    return schema
