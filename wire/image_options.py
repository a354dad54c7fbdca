"""How an image model is loaded: quantization and offloading, written once.

The manager validates these in models.json (``manager.spec.ImageModel``) and passes them
as ``HOMELAB_IMAGE_*`` variables; the image server validates them again at start-up
(``imageserver.settings``) and applies them (``imageserver.loading``); its ``/health``
reports what it loaded (`ImageLoaded`, in ``wire.model_server.ImageHealth``). The
manager's footprint table (``manager.image_footprints``) is keyed by the same values.

- `Quantize`, the transformer/UNet (the *denoiser*): ``gguf`` (a GGUF file of it,
  `gguf_file`, loaded with diffusers' GGUF loader and dequantized layer by layer as it
  runs), ``torchao-int8`` / ``torchao-int4`` (torchao weight-only), ``quanto-int8`` /
  ``quanto-int4`` (optimum-quanto weights), ``bnb-nf4`` (bitsandbytes 4-bit NF4; CUDA
  only).
- `TextQuantize`, the text encoders (every ``text_encoder*`` component): the same but
  GGUF.
- `Offload`: ``model`` (whole components move to the GPU while they run),
  ``sequential`` (each layer moves as it runs: least memory, slowest), ``group-block`` /
  ``group-leaf`` (diffusers' group offloading of every model component by block or by
  leaf layer).

`problems` lists the combinations that cannot work, for both programs; `park_problem`
says why a pipeline loaded with these options cannot be parked on the CPU (the warm tier:
``imageserver.park``, models.json ``warm``).
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict

Quantize = Literal[
    "none", "gguf", "torchao-int8", "torchao-int4", "quanto-int8", "quanto-int4", "bnb-nf4"
]
TextQuantize = Literal[
    "none", "torchao-int8", "torchao-int4", "quanto-int8", "quanto-int4", "bnb-nf4"
]
Offload = Literal["none", "model", "sequential", "group-block", "group-leaf"]

QUANTIZE: tuple[str, ...] = get_args(Quantize)
TEXT_QUANTIZE: tuple[str, ...] = get_args(TextQuantize)
OFFLOAD: tuple[str, ...] = get_args(Offload)

CUDA_ONLY = {
    "bnb-nf4": "bitsandbytes 4-bit (bnb-nf4) needs a CUDA GPU (diffusers refuses it without one)",
    "torchao-int4": (
        "torchao int4 weight-only (torchao-int4) needs a CUDA GPU (its int4 kernels are CUDA's)"
    ),
}
"""Options that cannot load without CUDA, and why."""

GGUF_TYPE_RE = re.compile(
    r"(?:^|[-_.])((?:IQ[1-4]_[A-Z]+)|(?:Q[2-8]_(?:K(?:_[SML])?|[01]))|BF16|F16|F32)(?=[-_.]|$)",
    re.IGNORECASE,
)


def gguf_type(path: str) -> str | None:
    """The GGUF quantization type a file name announces ('flux1-dev-Q4_K_S.gguf' -> 'Q4_K_S'),
    upper case; None when the name says none."""
    name = path.rsplit("/", 1)[-1]
    match = GGUF_TYPE_RE.search(name.removesuffix(".gguf"))
    return match.group(1).upper() if match else None


def problems(
    *,
    device: str,
    dtype: str,
    quantize: str,
    gguf_file: str | None,
    text_encoder_quantize: str,
    offload: str,
) -> list[str]:
    """Why these loading options cannot work together (empty: they can). `device` is the
    configured torch device (``cuda``, ``cuda:1``, ``cpu``, ``mps``). Pure."""
    out: list[str] = []
    cuda = device.startswith("cuda")
    if quantize == "gguf" and not gguf_file:
        out.append("quantize 'gguf' needs gguf_file (the transformer/UNet as a .gguf file)")
    if gguf_file and quantize != "gguf":
        out.append("gguf_file is only read with quantize 'gguf'")
    if gguf_file and not gguf_file.lower().endswith(".gguf"):
        out.append(f"gguf_file {gguf_file!r} must name a .gguf file")
    for which, value in (("quantize", quantize), ("text_encoder_quantize", text_encoder_quantize)):
        if value in CUDA_ONLY and not cuda:
            out.append(f"{which}: {CUDA_ONLY[value]}, and device is {device!r}")
    if offload != "none" and device == "mps":
        out.append(f"offload {offload!r} moves weights between the CPU and a CUDA GPU, not mps")
    if offload == "sequential" and not cuda:
        out.append(
            "offload 'sequential' needs a CUDA device (accelerate's layer-by-layer hooks fail "
            f"with device {device!r}); use 'model' or 'group-leaf'"
        )
    return out


def park_problem(offload: str) -> str | None:
    """Why a pipeline with this offloading cannot be parked in host memory and moved back
    (None: it can). Pure.

    Every offload option installs hooks that own where each module lives: diffusers
    refuses ``.to('cuda')`` after sequential offload, skips group-offloaded modules in
    ``.to()`` (the move would do nothing), and warns that moving a model-offloaded
    pipeline to the GPU loses the offload. Their weights wait in host memory between
    uses already, so a stop frees the GPU as well. Quantized weights move with ``.to()``:
    GGUF, torchao and quanto tensors carry their quantized data along (the diffusers tier
    parks each on the CPU), bitsandbytes NF4 since bitsandbytes 0.43.2; a move that fails
    anyway is the image server's 409 ``cannot_park``."""
    if offload == "none":
        return None
    return (
        f"offload {offload!r} cannot be parked: its hooks own where each module lives, so "
        "diffusers will not move the pipeline as a whole (and its weights wait in host "
        "memory between uses already)"
    )


class ImageLoaded(BaseModel):
    """What the image server loaded (``/health``'s ``loaded`` once ready)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    pipeline: str
    """The main pipeline class, e.g. 'FluxPipeline'."""
    device: str
    dtype: str
    quantize: str = "none"
    """How the transformer/UNet was loaded (`Quantize`)."""
    gguf_type: str | None = None
    """With ``gguf``: the quantization type of its file (e.g. 'Q4_K_S'), when it says."""
    text_encoder_quantize: str = "none"
    text_encoders: list[str] = []
    """The components `text_encoder_quantize` applied to."""
    offload: str = "none"
    vae_slicing: bool = False
    vae_tiling: bool = False
