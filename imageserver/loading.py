"""How the pipeline is loaded: quantization of the transformer/UNet and the text encoders,
offloading, VAE slicing and tiling (`wire.image_options`; models.json's `quantize`,
`gguf_file`, `text_encoder_quantize`, `offload`, `cpu_offload`, `vae_slicing`,
`vae_tiling`, `attention_slicing`).

`pretrained_kwargs(settings, dtype)` is what ``DiffusionPipeline.from_pretrained`` gets
besides the model and dtype: a ``PipelineQuantizationConfig`` whose ``quant_mapping``
names the denoiser (``transformer`` or ``unet``, read from the model's
``model_index.json``) and each ``text_encoder*`` component, or, for GGUF, the denoiser
itself, loaded with ``from_single_file(gguf_file, quantization_config=
GGUFQuantizationConfig(...))`` against the model's own config. `place` puts the loaded
pipelines on the device with the offloading asked for. `loaded` says what was done
(``/health``'s ``loaded``).

Everything here blocks (it loads weights) and runs on the GPU worker thread. A missing
package or device raises LoadFailed naming the model and what to install; that is the
start-up check of what the settings validation (`imageserver.settings`) cannot know.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch
from diffusers import DiffusionPipeline

from imageserver.errors import LoadFailed
from imageserver.settings import Settings
from wire.image_options import CUDA_ONLY, ImageLoaded, gguf_type

log = logging.getLogger(__name__)

DENOISERS = ("transformer", "unet")
"""The component names of the model that denoises, the one `quantize` applies to."""
PACKAGES = {"gguf": "gguf", "torchao": "torchao", "quanto": "optimum.quanto", "bnb": "bitsandbytes"}
"""The module each backend (the option's prefix) needs."""
PIP_NAMES = {
    "gguf": "gguf",
    "torchao": "torchao",
    "quanto": "optimum-quanto",
    "bnb": "bitsandbytes",
}
GROUP_BLOCKS = 1
"""Blocks per group with offload 'group-block'."""


def _oneline(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_environment(settings: Settings, *, cuda: bool) -> None:
    """Refuse, naming the model, what this process cannot load: a backend whose package is
    missing, a CUDA-only option without CUDA. Raises LoadFailed."""
    name = settings.served_name
    for which, value in (
        ("quantize", settings.quantize),
        ("text_encoder_quantize", settings.text_encoder_quantize),
    ):
        if value == "none":
            continue
        backend = value.split("-")[0]
        if importlib.util.find_spec(PACKAGES[backend].split(".")[0]) is None or (
            "." in PACKAGES[backend] and importlib.util.find_spec(PACKAGES[backend]) is None
        ):
            raise LoadFailed(
                f"model {name!r}: {which} {value!r} needs the Python package "
                f"{PIP_NAMES[backend]!r}, which this image server does not have"
            )
        if value in CUDA_ONLY and not cuda:
            raise LoadFailed(
                f"model {name!r}: {which}: {CUDA_ONLY[value]}, and CUDA is not available"
            )
    if settings.load_offload == "sequential" and not cuda:
        raise LoadFailed(f"model {name!r}: offload 'sequential' needs CUDA, which is not available")


def _components(settings: Settings) -> dict[str, Any]:
    """The model's model_index.json: component name -> [library, class]."""
    try:
        config = DiffusionPipeline.load_config(settings.model)
    except Exception as exc:
        raise LoadFailed(
            f"model {settings.served_name!r}: cannot read model_index.json of {settings.model!r}: "
            f"{_oneline(exc)}"
        ) from exc
    return {
        k: v
        for k, v in config.items()
        if not k.startswith("_") and isinstance(v, list | tuple) and len(v) == 2 and v[0]
    }


def _denoiser(settings: Settings, components: dict[str, Any]) -> str:
    for name in DENOISERS:
        if name in components:
            return name
    raise LoadFailed(
        f"model {settings.served_name!r}: quantize {settings.quantize!r} applies to a "
        f"transformer or unet, and {settings.model!r} has neither ({', '.join(components)})"
    )


def text_encoders(components: dict[str, Any]) -> list[str]:
    """The text encoders a `text_encoder_quantize` applies to: `text_encoder*` components
    that transformers loads."""
    return sorted(
        n
        for n, (lib, _) in components.items()
        if n.startswith("text_encoder") and lib == "transformers"
    )


def _diffusers_config(option: str, dtype: torch.dtype) -> Any:
    import diffusers

    if option.startswith("torchao"):
        return diffusers.TorchAoConfig(_torchao(option))
    if option.startswith("quanto"):
        return diffusers.QuantoConfig(weights_dtype=option.split("-")[1])
    return diffusers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
    )


def _transformers_config(option: str, dtype: torch.dtype) -> Any:
    import transformers

    if option.startswith("torchao"):
        return transformers.TorchAoConfig(_torchao(option))
    if option.startswith("quanto"):
        return transformers.QuantoConfig(weights=option.split("-")[1])
    return transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
    )


def _torchao(option: str) -> Any:
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

    if option == "torchao-int8":
        return Int8WeightOnlyConfig()
    # tinygemm's layout: torch's own CUDA int4 kernel, no extra kernel package
    return Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d")


def pretrained_kwargs(settings: Settings, dtype: torch.dtype) -> tuple[dict[str, Any], list[str]]:
    """Extra arguments for ``DiffusionPipeline.from_pretrained`` and the text encoders the
    text-encoder quantization applies to. Blocks (a GGUF transformer is loaded here).
    Raises LoadFailed naming the model."""
    if settings.quantize == "none" and settings.text_encoder_quantize == "none":
        return {}, []
    from diffusers import PipelineQuantizationConfig

    components = _components(settings)
    kwargs: dict[str, Any] = {}
    mapping: dict[str, Any] = {}
    encoders: list[str] = []
    if settings.quantize == "gguf":
        name = _denoiser(settings, components)
        kwargs[name] = _gguf_denoiser(settings, name, components[name][1], dtype)
    elif settings.quantize != "none":
        name = _denoiser(settings, components)
        mapping[name] = _diffusers_config(settings.quantize, dtype)
    if settings.text_encoder_quantize != "none":
        encoders = text_encoders(components)
        if not encoders:
            raise LoadFailed(
                f"model {settings.served_name!r}: text_encoder_quantize "
                f"{settings.text_encoder_quantize!r} found no transformers text encoder in "
                f"{settings.model!r}"
            )
        for name in encoders:
            mapping[name] = _transformers_config(settings.text_encoder_quantize, dtype)
    if mapping:
        kwargs["quantization_config"] = PipelineQuantizationConfig(quant_mapping=mapping)
    return kwargs, encoders


def _gguf_denoiser(settings: Settings, name: str, class_name: str, dtype: torch.dtype) -> Any:
    import diffusers
    from diffusers import GGUFQuantizationConfig

    cls = getattr(diffusers, class_name, None)
    if cls is None or not hasattr(cls, "from_single_file"):
        raise LoadFailed(
            f"model {settings.served_name!r}: diffusers cannot load {class_name} ({name}) from "
            "a GGUF file"
        )
    try:
        return cls.from_single_file(
            settings.gguf_file,
            config=settings.model,
            subfolder=name,
            quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
            torch_dtype=dtype,
        )
    except Exception as exc:
        raise LoadFailed(
            f"model {settings.served_name!r}: cannot load {class_name} from the GGUF file "
            f"{settings.gguf_file!r}: {_oneline(exc)}"
        ) from exc


def place(
    pipelines: list[DiffusionPipeline], main: DiffusionPipeline, settings: Settings, device: str
) -> None:
    """Put the pipelines on `device` with the offloading asked for, then the slicing and
    tiling options. Modules are shared between the pipelines, so most calls act on all.
    Raises whatever diffusers raises (the caller words it)."""
    offload = settings.load_offload
    if offload == "model":
        # Each pipeline installs its own offload hooks on the shared modules and
        # re-installs them after every call (diffusers' maybe_free_model_hooks);
        # main goes last so its hooks are the ones in place at first.
        for pipe in pipelines:
            pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        for pipe in pipelines:
            pipe.enable_sequential_cpu_offload(device=device)
    elif offload in ("group-block", "group-leaf"):
        cuda = device.startswith("cuda")
        main.enable_group_offload(
            onload_device=torch.device(device),
            offload_device=torch.device("cpu"),
            offload_type="block_level" if offload == "group-block" else "leaf_level",
            num_blocks_per_group=GROUP_BLOCKS if offload == "group-block" else None,
            use_stream=cuda,
        )
    else:
        main.to(device)
    if settings.attention_slicing:
        if hasattr(main, "enable_attention_slicing"):
            main.enable_attention_slicing()
        else:
            log.warning("%s has no attention slicing; option ignored", type(main).__name__)
    vae = getattr(main, "vae", None)
    for flag, method in (("vae_slicing", "enable_slicing"), ("vae_tiling", "enable_tiling")):
        if not getattr(settings, flag):
            continue
        if vae is not None and hasattr(vae, method):
            getattr(vae, method)()
        else:
            log.warning("%s has no %s VAE; option %s ignored", type(main).__name__, method, flag)


def loaded(
    main: DiffusionPipeline, settings: Settings, device: str, encoders: list[str]
) -> ImageLoaded:
    """What was loaded, for ``/health``."""
    return ImageLoaded(
        pipeline=type(main).__name__,
        device=device,
        dtype=settings.dtype,
        quantize=settings.quantize,
        gguf_type=gguf_type(settings.gguf_file) if settings.quantize == "gguf" else None,
        text_encoder_quantize=settings.text_encoder_quantize,
        text_encoders=encoders,
        offload=settings.load_offload,
        vae_slicing=settings.vae_slicing,
        vae_tiling=settings.vae_tiling,
    )
