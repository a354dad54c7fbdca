"""Which pipelines serve which task, the guidance argument, and device checks.

The tables are the real diffusers AutoPipeline tables when diffusers is
installed (so a diffusers upgrade that moves a class shows up here), and a
copy of the relevant rows otherwise.
"""

from __future__ import annotations

import inspect

import pytest

from imageserver.classify import SELF, Plan, guidance_parameter, plan_pipelines, resolve_device
from imageserver.errors import LoadFailed


def _tables() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    try:
        from diffusers.pipelines.auto_pipeline import (
            AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
            AUTO_INPAINT_PIPELINES_MAPPING,
            AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
        )
    except ImportError:
        t2i = {
            "stable-diffusion": "StableDiffusionPipeline",
            "stable-diffusion-xl": "StableDiffusionXLPipeline",
            "flux": "FluxPipeline",
            "flux-kontext": "FluxKontextPipeline",
            "qwenimage": "QwenImagePipeline",
        }
        i2i = {
            "stable-diffusion": "StableDiffusionImg2ImgPipeline",
            "stable-diffusion-xl": "StableDiffusionXLImg2ImgPipeline",
            "flux": "FluxImg2ImgPipeline",
            "flux-kontext": "FluxKontextPipeline",
            "qwenimage": "QwenImageImg2ImgPipeline",
            "qwenimage-edit": "QwenImageEditPipeline",
            "qwenimage-edit-plus": "QwenImageEditPlusPipeline",
        }
        inp = {
            "stable-diffusion": "StableDiffusionInpaintPipeline",
            "stable-diffusion-xl": "StableDiffusionXLInpaintPipeline",
            "flux": "FluxInpaintPipeline",
            "qwenimage": "QwenImageInpaintPipeline",
            "qwenimage-edit": "QwenImageEditInpaintPipeline",
        }
        return t2i, i2i, inp
    names = lambda table: {k: v.__name__ for k, v in table.items()}  # noqa: E731
    return (
        names(AUTO_TEXT2IMAGE_PIPELINES_MAPPING),
        names(AUTO_IMAGE2IMAGE_PIPELINES_MAPPING),
        names(AUTO_INPAINT_PIPELINES_MAPPING),
    )


def params(*names: str, required: tuple[str, ...] = ()) -> dict[str, inspect.Parameter]:
    out = {}
    for name in names:
        default = inspect.Parameter.empty if name in required else None
        out[name] = inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
    return out


@pytest.mark.parametrize(
    "cls,plan",
    [
        (
            "StableDiffusionPipeline",
            Plan(SELF, "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
        ),
        (
            "StableDiffusionXLPipeline",
            Plan(SELF, "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
        ),
        ("FluxPipeline", Plan(SELF, "FluxImg2ImgPipeline", "FluxInpaintPipeline")),
        ("FluxKontextPipeline", Plan(SELF, SELF, None)),
        ("QwenImagePipeline", Plan(SELF, "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline")),
        # Edit-only models: editing is the main job, generation is refused.
        ("QwenImageEditPipeline", Plan(None, SELF, "QwenImageEditInpaintPipeline")),
        ("QwenImageEditPlusPipeline", Plan(None, SELF, None)),
        ("StableDiffusionImg2ImgPipeline", Plan(None, SELF, "StableDiffusionInpaintPipeline")),
        ("StableDiffusionInpaintPipeline", Plan(None, None, SELF)),
    ],
)
def test_plans_for_known_pipelines(cls: str, plan: Plan) -> None:
    assert plan_pipelines(cls, *_tables(), params("prompt")) == plan


@pytest.mark.parametrize(
    "call,plan",
    [
        (params("prompt", "height", "width"), Plan(SELF, None, None)),
        (params("prompt", "image", required=("image",)), Plan(None, SELF, None)),
        (params("prompt", "image"), Plan(SELF, SELF, None)),
        (params("prompt", "image", "mask_image"), Plan(None, None, SELF)),
    ],
)
def test_unknown_pipelines_fall_back_to_their_signature(call, plan: Plan) -> None:
    assert plan_pipelines("SomeCommunityPipeline", *_tables(), call) == plan


def test_guidance_parameter() -> None:
    sd = params("guidance_scale")
    flux = params("guidance_scale", "true_cfg_scale")
    assert guidance_parameter(sd, guidance_embeds=False) == "guidance_scale"
    assert guidance_parameter(flux, guidance_embeds=True) == "guidance_scale"  # FLUX.1-dev
    assert (
        guidance_parameter(flux, guidance_embeds=False) == "true_cfg_scale"
    )  # Qwen-Image, schnell
    assert guidance_parameter(params("true_cfg_scale"), guidance_embeds=False) == "true_cfg_scale"
    assert guidance_parameter(params("prompt"), guidance_embeds=False) is None


def test_resolve_device_accepts_what_exists() -> None:
    assert resolve_device("cpu", cuda_count=0, mps_available=False, torch_cuda=None) == "cpu"
    assert resolve_device("cuda", cuda_count=1, mps_available=False, torch_cuda="12.8") == "cuda"
    assert (
        resolve_device("cuda:1", cuda_count=2, mps_available=False, torch_cuda="12.8") == "cuda:1"
    )
    assert resolve_device("mps", cuda_count=0, mps_available=True, torch_cuda=None) == "mps"


@pytest.mark.parametrize(
    "device,count,torch_cuda,fragment",
    [
        ("cuda", 0, None, "CPU-only build"),
        ("cuda", 0, "12.8", "no CUDA device"),
        ("cuda:1", 1, "12.8", "only 1 CUDA device"),
        ("mps", 0, None, "no MPS device"),
    ],
)
def test_resolve_device_never_falls_back(
    device: str, count: int, torch_cuda, fragment: str
) -> None:
    with pytest.raises(LoadFailed, match=fragment):
        resolve_device(device, cuda_count=count, mps_available=False, torch_cuda=torch_cuda)
