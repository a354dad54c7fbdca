"""The launch recipe both runtimes share: a model server's arguments and environment.

`DockerRuntime` and `ProcessRuntime` start the same servers the same way: vLLM's
OpenAI server (or llama.cpp's `llama-server`) with `text_server_args`, the image server configured through
`image_server_env` (the `HOMELAB_IMAGE_*` variables, docs/architecture.md "Image
server environment"), and `server_env`, the variables every launch sets: the Hugging
Face token, the image server's variables, the spec's `env`, then the upstream key.
What differs (the container's mounts and gate; the process's inherited environment and
owner marks) stays in each runtime. Pure functions, no docker SDK: the process runtime
imports this module only.
"""

from __future__ import annotations

from manager import model_guard
from manager.runtime import Spec, key_env
from manager.settings import ManagerSettings
from manager.spec import AudioModel, EmbeddingModel, ImageModel, LanguageModel, SttModel, TextModel
from manager.tool_calls import vllm_args


def text_server_args(name: str, spec: LanguageModel, host: str, port: int) -> list[str]:
    """The server's arguments for `spec`, served as `name` on host:port: vLLM's, or
    `llama_server_args` for a text model on llama.cpp.

    `vllm serve` (the vllm/vllm-openai entrypoint) and
    `python -m vllm.entrypoints.openai.api_server` both accept these; `vllm serve`
    logs that `--model` is deprecated in favour of a positional model but honours it.
    The spec's `tool_calls` adds vLLM's tool flags (`manager.tool_calls.vllm_args`); an
    embedding model runs on vLLM's pooling runner (`--runner pooling`) instead. Every
    vLLM launch loads `manager.model_guard` (`--middleware`), which refuses every path
    without the upstream key; the runtime puts the module on the server's PYTHONPATH.
    """
    if isinstance(spec, TextModel) and spec.backend == "llama.cpp":
        return llama_server_args(name, spec, host, port)
    if isinstance(spec, EmbeddingModel):
        extra = ["--runner", "pooling"]
    else:
        extra = vllm_args(spec.tool_calls)
    if sleep_mode(spec):
        extra = [*extra, SLEEP_MODE_FLAG]
    return [
        "--model",
        spec.model,
        "--served-model-name",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "--middleware",
        model_guard.MIDDLEWARE,
        *extra,
        *spec.args,
    ]


SLEEP_MODE_FLAG = "--enable-sleep-mode"
DEV_MODE_ENV = "VLLM_SERVER_DEV_MODE"
"""vLLM registers ``/sleep``, ``/wake_up``, ``/is_sleeping`` (and its other development
routes, such as ``/collective_rpc``) only with this variable set to 1; the model guard
closes every one of them to a request without the upstream key."""


def sleep_mode(spec: Spec) -> bool:
    """Whether `spec`'s vLLM server is launched with sleep mode: it opts in (``warm``) and
    runs on the GPU. vLLM's CPU build has no sleep mode (its platform check allows CUDA,
    ROCm and XPU only), so a ``gpu: false`` model never gets the flag; the manager still
    asks such a server to sleep, and one that cannot is stopped instead
    (`manager.warm`)."""
    return (
        isinstance(spec, LanguageModel)
        and spec.warm is not None
        and spec.gpu
        and (not isinstance(spec, TextModel) or spec.backend == "vllm")
    )


def llama_server_args(name: str, spec: TextModel, host: str, port: int) -> list[str]:
    """llama.cpp's `llama-server` arguments: the GGUF file, `name` as the alias /v1/models
    lists, the context (`-c`), the layers on the GPU (`-ngl`), `--jinja` (the model's own
    chat template, which tool calls need), then the spec's `args`. The upstream key is not
    here but in `LLAMA_API_KEY` (`server_env`), out of the process list. `--no-webui`: no
    chat page; llama.cpp then answers only `/health` and `/v1/health` without the key
    (its public paths are compiled in)."""
    return [
        "-m",
        spec.model,
        "--alias",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "-c",
        str(spec.llama_context),
        "-ngl",
        str(spec.llama_gpu_layers),
        "--jinja",
        "--no-webui",
        *spec.args,
    ]


def image_server_env(name: str, spec: ImageModel, port: int) -> dict[str, str]:
    """The `HOMELAB_IMAGE_*` variables the image server reads (documented in docs/architecture.md)."""
    env = {
        "HOMELAB_IMAGE_MODEL": spec.model,
        "HOMELAB_IMAGE_SERVED_NAME": name,
        "HOMELAB_IMAGE_DTYPE": spec.dtype,
        "HOMELAB_IMAGE_DEVICE": spec.device,
        "HOMELAB_IMAGE_CPU_OFFLOAD": "true" if spec.cpu_offload else "false",
        "HOMELAB_IMAGE_ATTENTION_SLICING": "true" if spec.attention_slicing else "false",
        "HOMELAB_IMAGE_VAE_TILING": "true" if spec.vae_tiling else "false",
        "HOMELAB_IMAGE_SIZES": ",".join(spec.sizes),
        "HOMELAB_IMAGE_MAX_N": str(spec.max_n),
        "HOMELAB_IMAGE_STEPS": str(spec.steps),
        "HOMELAB_IMAGE_PORT": str(port),
    }
    if spec.max_steps is not None:
        env["HOMELAB_IMAGE_MAX_STEPS"] = str(spec.max_steps)
    loading = {
        "HOMELAB_IMAGE_OFFLOAD": spec.offload,
        "HOMELAB_IMAGE_QUANTIZE": spec.quantize,
        "HOMELAB_IMAGE_GGUF_FILE": spec.gguf_file or "",
        "HOMELAB_IMAGE_TEXT_ENCODER_QUANTIZE": spec.text_encoder_quantize,
        "HOMELAB_IMAGE_VAE_SLICING": "true" if spec.vae_slicing else "false",
    }
    # Only what differs from the defaults, so an older image server is told nothing new.
    env.update({k: v for k, v in loading.items() if v not in ("none", "", "false")})
    return env


def audio_server_env(name: str, spec: AudioModel, port: int) -> dict[str, str]:
    """The `HOMELAB_AUDIO_*` variables the audio server reads (`audioserver.settings`):
    the type (stt or tts), the model, the served name, the device, the compute type (stt)."""
    env = {
        "HOMELAB_AUDIO_TYPE": spec.type,
        "HOMELAB_AUDIO_MODEL": spec.model,
        "HOMELAB_AUDIO_SERVED_NAME": name,
        "HOMELAB_AUDIO_DEVICE": spec.device,
        "HOMELAB_AUDIO_PORT": str(port),
    }
    if isinstance(spec, SttModel):
        env["HOMELAB_AUDIO_COMPUTE_TYPE"] = spec.compute_type
    return env


def hf_token(settings: ManagerSettings) -> str | None:
    """The Hugging Face token from settings (`hf_token`, HOMELAB_HF_TOKEN), or None."""
    if settings.hf_token is None:
        return None
    return settings.hf_token.get_secret_value() or None


def server_env(
    name: str,
    spec: Spec,
    settings: ManagerSettings,
    *,
    port: int,
    host: str | None = None,
    api_key: str | None = None,
) -> dict[str, str]:
    """The variables every launch of `name` sets, in this order (a later one wins): the
    Hugging Face token (`HF_TOKEN` and `HUGGING_FACE_HUB_TOKEN`, when configured); for an
    image model the image server's variables, listening on `port` (and `host` when given);
    ``VLLM_SERVER_DEV_MODE=1`` for a vLLM model launched with sleep mode (`sleep_mode`);
    the spec's `env`; `api_key` (the server's upstream key) in its `key_env` variable."""
    env: dict[str, str] = {}
    token = hf_token(settings)
    if token:
        env["HUGGING_FACE_HUB_TOKEN"] = token
        env["HF_TOKEN"] = token
    if isinstance(spec, ImageModel):
        env.update(image_server_env(name, spec, port))
        if host is not None:
            env["HOMELAB_IMAGE_HOST"] = host
    elif isinstance(spec, AudioModel):
        env.update(audio_server_env(name, spec, port))
        if host is not None:
            env["HOMELAB_AUDIO_HOST"] = host
    if sleep_mode(spec):
        env[DEV_MODE_ENV] = "1"
    env.update(spec.env)
    if api_key:
        env[key_env(spec)] = api_key
    return env
