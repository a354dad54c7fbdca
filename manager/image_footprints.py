"""The GPU memory an image model takes, from its loading options, for models that declare
no ``gpu_memory_mib``.

A known pipeline (`FAMILIES`, recognised from its Hugging Face id) has its components'
parameter counts and the working memory of one 1024x1024 image (a denoising step's
activations, the VAE decode). `estimate` turns the model's options (`quantize` with its GGUF type,
`text_encoder_quantize`, `offload`, `dtype`) into the peak GPU memory:

- weights: parameters x bytes per parameter of their option (`BYTES_PER_PARAM`; a GGUF
  file's type gives its bits per weight, `GGUF_BITS`);
- offload ``none``: every component plus the larger of a denoising step's activations and
  the VAE decode; ``model`` (one component on the GPU at a time): the largest of the
  denoiser with its activations, the VAE with its decode, and the largest text encoder;
  ``sequential`` and ``group-leaf``: the activations or decode plus `LAYER_MIB`;
  ``group-block``: the same plus `BLOCK_MIB`. `vae_tiling` makes the decode small.

Where a published measurement exists for exactly these options (`PUBLISHED`), it is used
instead and the estimate says so, with its source; everything else is marked computed.
docs/image-models.md has the table for 8/12/16/24 GB cards.

Once the manager has seen the model load (``manager.footprints``), the largest reading
replaces the estimate (`planned`): the table only plans the first start. Pure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from manager.spec import ImageModel
from wire.image_options import gguf_type

GB = 1000**3
MIB = 1024**2


@dataclass(frozen=True)
class Family:
    """A known pipeline: parameter counts (billions) and working memory (GB)."""

    name: str
    pattern: str
    """Matched (case-insensitive, `re.search`) against models.json's `model`."""
    denoiser_b: float
    text_encoders_b: tuple[float, ...]
    vae_b: float
    denoise_gb: float
    """Activations of a denoising step at 1024x1024 (512x512 for SD 1.5)."""
    decode_gb: float
    """The VAE decode of that image in one piece (`vae_tiling` cuts it to `TILED_DECODE_GB`)."""
    source: str


FAMILIES: tuple[Family, ...] = (
    Family(
        "FLUX.1",
        r"flux\.?1[-_.]?(dev|schnell)",
        11.9,
        (4.76, 0.12),
        0.08,
        1.3,
        3.5,
        "parameters: FLUX.1 model card (12B) and T5-XXL/CLIP-L; working memory: HF blog "
        "'Exploring Quantization Backends in Diffusers' (bf16: 31.4 GB loaded, 36.2 GB peak)",
    ),
    Family(
        "Qwen-Image-Edit",
        r"qwen-image-edit",
        20.4,
        (8.3,),
        0.13,
        2.5,
        3.0,
        "parameters: Qwen-Image technical report (20B MMDiT, Qwen2.5-VL 7B); working memory "
        "computed (more tokens than FLUX: the input image's)",
    ),
    Family(
        "Qwen-Image",
        r"qwen-image",
        20.4,
        (8.3,),
        0.13,
        1.5,
        3.0,
        "parameters: Qwen-Image technical report; working memory computed",
    ),
    Family(
        "SDXL",
        r"stable-diffusion-xl|sdxl",
        2.57,
        (0.69, 0.12),
        0.08,
        1.0,
        2.0,
        "parameters: SDXL paper (2.6B UNet, OpenCLIP-bigG + CLIP-L); working memory from "
        "community figures (~9-11 GB fp16 at 1024x1024)",
    ),
    Family(
        "SD 1.5",
        r"stable-diffusion-v1-5|stable-diffusion-v1",
        0.86,
        (0.12,),
        0.08,
        0.7,
        0.8,
        "parameters: SD 1.5 model card; working memory from community figures",
    ),
)

BYTES_PER_PARAM = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "torchao-int8": 1.0,
    "quanto-int8": 1.0,
    "torchao-int4": 0.53,
    "quanto-int4": 0.53,
    "bnb-nf4": 0.53,
}
"""Weights' bytes per parameter (int4/nf4: half a byte plus their scales)."""

GGUF_BITS = {
    "Q8_0": 8.5,
    "Q6_K": 6.5625,
    "Q5_K_M": 5.69,
    "Q5_K_S": 5.54,
    "Q4_K_M": 4.85,
    "Q4_K_S": 4.58,
    "Q3_K_M": 3.91,
    "Q3_K_S": 3.5,
    "Q5_1": 6.0,
    "Q5_0": 5.5,
    "Q5_K": 5.5,
    "Q4_1": 5.0,
    "Q4_0": 4.5,
    "Q4_K": 4.5,
    "Q3_K": 3.4375,
    "Q2_K": 2.625,
    "BF16": 16.0,
    "F16": 16.0,
    "F32": 32.0,
}
"""Bits per weight of GGUF's formats: ggml's block sizes, and for the K-quant mixes
(_S/_M) llama.cpp's quantize table (another mix falls back to its base type)."""

TILED_DECODE_GB = 0.7
"""The VAE decode with `vae_tiling` (tiles of 512x512)."""
LAYER_MIB = 1024
"""GPU memory held by layer-wise offloading (sequential, group leaf level) besides the
working memory: the issue's figure for FLUX.1-dev is 0.53 GB for the transformer."""
BLOCK_MIB = 2048
"""Likewise for group offloading by block (one block per group)."""

PUBLISHED: dict[tuple[str, str, str, str], tuple[float, str]] = {
    ("FLUX.1", "none", "none", "none"): (
        36.2,
        "HF blog 'Exploring Quantization Backends in Diffusers', bf16 peak",
    ),
    ("FLUX.1", "gguf:Q4_1", "none", "none"): (
        21.3,
        "HF blog 'Exploring Quantization Backends in Diffusers', GGUF Q4_1 transformer peak",
    ),
    ("FLUX.1", "gguf:Q8_0", "none", "none"): (
        26.0,
        "HF blog 'Exploring Quantization Backends in Diffusers', GGUF Q8_0 transformer peak",
    ),
}
"""Peak GB measured for (family, denoiser option, text encoders, offload), bf16, one
1024x1024 image on an H100: https://huggingface.co/blog/diffusers-quantization."""


@dataclass(frozen=True)
class Estimate:
    mib: int
    how: str
    """'published: SOURCE' or 'computed: FAMILY, ...'."""


def family(spec: ImageModel) -> Family | None:
    """The known pipeline `spec.model` is, or None."""
    for fam in FAMILIES:
        if re.search(fam.pattern, spec.model, re.IGNORECASE):
            return fam
    return None


def denoiser_option(spec: ImageModel) -> str | None:
    """'none', a backend option, or 'gguf:TYPE' (None: a GGUF file whose name gives no
    known type)."""
    if spec.quantize != "gguf":
        return spec.quantize
    kind = gguf_type(spec.gguf_file or "")
    if kind is None:
        return None
    if kind in GGUF_BITS:
        return f"gguf:{kind}"
    base = re.sub(r"_[SML]$", "", kind)
    return f"gguf:{base}" if base in GGUF_BITS else None


def _bytes(option: str, dtype: str) -> float:
    if option == "none":
        return BYTES_PER_PARAM[dtype]
    if option.startswith("gguf:"):
        return GGUF_BITS[option[5:]] / 8
    return BYTES_PER_PARAM[option]


def estimate(spec: ImageModel) -> Estimate | None:
    """The peak GPU memory of `spec` with its options, or None for an unknown pipeline or
    GGUF type."""
    fam = family(spec)
    option = denoiser_option(spec)
    if fam is None or option is None:
        return None
    offload = spec.load_offload
    published = PUBLISHED.get((fam.name, option, spec.text_encoder_quantize, offload))
    if published is not None and spec.dtype == "bf16":
        return Estimate(math.ceil(published[0] * GB / MIB), f"published: {published[1]}")
    dense = BYTES_PER_PARAM[spec.dtype]
    denoiser = fam.denoiser_b * _bytes(option, spec.dtype)
    text = [b * _bytes(spec.text_encoder_quantize, spec.dtype) for b in fam.text_encoders_b]
    vae = fam.vae_b * dense
    decode = TILED_DECODE_GB if spec.vae_tiling else fam.decode_gb
    if offload == "none":
        gb = denoiser + sum(text) + vae + max(fam.denoise_gb, decode)
    elif offload == "model":
        # one component on the GPU at a time: the denoiser's steps, or the decode, or a
        # text encoder
        gb = max(denoiser + fam.denoise_gb, vae + decode, max(text) + 1.0)
    else:
        held = (BLOCK_MIB if offload == "group-block" else LAYER_MIB) * MIB / GB
        gb = max(fam.denoise_gb, decode) + held
    what = f"{option} denoiser, {spec.text_encoder_quantize} text encoders, offload {offload}"
    return Estimate(math.ceil(gb * GB / MIB), f"computed: {fam.name}, {what}")


def planned(spec: ImageModel, readings: list[int]) -> Estimate | None:
    """What to plan `spec` (declaring no gpu_memory_mib) with: the largest footprint seen,
    else `estimate`."""
    if readings:
        return Estimate(max(readings), f"learned: the most of {len(readings)} loads seen")
    return estimate(spec)
