"""Deciding, from a pipeline's class, what the model can do and which pipelines serve it.

Pure functions over class names and call signatures (no torch), so the rules
are unit-tested without loading anything. The facts they read come from
diffusers' own AutoPipeline tables (`AUTO_TEXT2IMAGE_PIPELINES_MAPPING`, ...):
a table maps a model family ('stable-diffusion-xl', 'flux', 'qwenimage-edit',
...) to that family's pipeline class for one task.

The rule: **the pipeline class the model ships (model_index.json) is its
main job.**
- A text-to-image class (StableDiffusionPipeline, FluxPipeline,
  QwenImagePipeline, ...) generates; edits use its family's image-to-image
  and inpainting classes built with `from_pipe` (same weights, no second load).
- A class found only in the image-to-image or inpainting tables
  (QwenImageEditPipeline, QwenImageEditPlusPipeline, a saved
  StableDiffusionImg2ImgPipeline, ...) is edit-only: generations get a 400,
  edits are its main job, and a family inpainting class (e.g.
  QwenImageEditInpaintPipeline) serves masked edits.
- A class in no table falls back to its `__call__` signature: `mask_image`
  means inpainting, a required `image` means image-to-image only, an optional
  `image` means both, none means text-to-image only.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass

from imageserver.errors import LoadFailed


@dataclass(frozen=True)
class Plan:
    """Which class serves each task: 'self' (the loaded pipeline), a class name to build with
    `from_pipe`, or None (the task is not supported)."""

    generate: str | None
    edit: str | None
    inpaint: str | None


SELF = "self"


def _family(class_name: str, tables: list[Mapping[str, str]]) -> str | None:
    for table in tables:
        for family, name in table.items():
            if name == class_name:
                return family
    return None


def plan_pipelines(
    class_name: str,
    text2image: Mapping[str, str],
    image2image: Mapping[str, str],
    inpaint: Mapping[str, str],
    call_params: Mapping[str, inspect.Parameter],
) -> Plan:
    """Apply the module's rule. Tables map family -> pipeline class name."""
    in_t2i = class_name in text2image.values()
    in_i2i = class_name in image2image.values()
    in_inp = class_name in inpaint.values()
    family = _family(class_name, [text2image, image2image, inpaint])

    def other(table: Mapping[str, str], own: bool) -> str | None:
        if own:
            return SELF
        name = table.get(family) if family else None
        if name is None:
            return None
        return SELF if name == class_name else name

    if in_t2i:
        return Plan(generate=SELF, edit=other(image2image, in_i2i), inpaint=other(inpaint, in_inp))
    if in_i2i or in_inp:
        return Plan(generate=None, edit=SELF if in_i2i else None, inpaint=other(inpaint, in_inp))
    if "mask_image" in call_params:
        return Plan(generate=None, edit=None, inpaint=SELF)
    image = call_params.get("image")
    if image is None:
        return Plan(generate=SELF, edit=None, inpaint=None)
    if image.default is inspect.Parameter.empty:
        return Plan(generate=None, edit=SELF, inpaint=None)
    return Plan(generate=SELF, edit=SELF, inpaint=None)


def guidance_parameter(call_params: Mapping[str, object], guidance_embeds: bool) -> str | None:
    """Which `__call__` argument a request's `guidance` sets, or None if the pipeline has none.

    Classifier-free guidance is `guidance_scale` in SD/SDXL; guidance-distilled
    models (FLUX.1-dev: transformer `guidance_embeds`) also call their
    embedded guidance `guidance_scale`; Qwen-Image and FLUX.1-schnell call
    real CFG `true_cfg_scale` and ignore `guidance_scale`.
    """
    if "guidance_scale" in call_params and (guidance_embeds or "true_cfg_scale" not in call_params):
        return "guidance_scale"
    if "true_cfg_scale" in call_params:
        return "true_cfg_scale"
    return None


def resolve_device(
    requested: str, *, cuda_count: int, mps_available: bool, torch_cuda: str | None
) -> str:
    """Check the requested device exists; never silently fall back to another one.

    Raises LoadFailed naming the problem (the operator asked for that device).
    `torch_cuda` is `torch.version.cuda` (None on a CPU build of torch).
    """
    if requested == "cpu":
        return "cpu"
    if requested == "mps":
        if not mps_available:
            raise LoadFailed("HOMELAB_IMAGE_DEVICE is 'mps' but PyTorch sees no MPS device")
        return "mps"
    if not requested.startswith("cuda"):
        raise LoadFailed(f"HOMELAB_IMAGE_DEVICE {requested!r} is not cuda, cuda:N, cpu or mps")
    if cuda_count == 0:
        build = f"built for CUDA {torch_cuda}" if torch_cuda else "a CPU-only build"
        raise LoadFailed(
            f"HOMELAB_IMAGE_DEVICE is {requested!r} but PyTorch sees no CUDA device "
            f"(torch is {build}); give the container the GPU (--gpus) or set device 'cpu'"
        )
    index = int(requested.split(":", 1)[1]) if ":" in requested else 0
    if index >= cuda_count:
        raise LoadFailed(
            f"HOMELAB_IMAGE_DEVICE is {requested!r} but PyTorch sees only {cuda_count} CUDA device(s)"
        )
    return requested
