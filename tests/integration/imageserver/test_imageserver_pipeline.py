"""The real diffusers loading and generation code, in-process, on the tiny pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from imageserver.errors import (
    GenerationFailed,
    InvalidRequest,
    LoadFailed,
    OutOfMemory,
    UnsupportedTask,
)
from imageserver.model import EditJob, GenerateJob, ImageModel
from imageserver.settings import Settings
from wire.model_server import ImageProgress

pytestmark = pytest.mark.diffusers


def settings(model: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model": str(model),
        "served_name": "tiny",
        "device": "cpu",
        "dtype": "fp32",
        "sizes": "64x64",
    }
    values.update(overrides)
    return Settings(**values)


def load(model: Path, **overrides: object):
    from imageserver.diffusers_model import load_diffusers_model

    return load_diffusers_model(settings(model, **overrides))


def test_a_text_to_image_model_gets_edit_pipelines_that_share_its_weights(
    tiny_pipeline: Path,
) -> None:
    model = load(tiny_pipeline)
    assert isinstance(model, ImageModel)
    caps = model.capabilities
    assert (caps.pipeline, caps.generate, caps.edit, caps.inpaint) == (
        "StableDiffusionPipeline",
        True,
        True,
        True,
    )
    pipes = model.pipelines
    assert [type(p).__name__ for p in pipes.values()] == [
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
    ]
    main = pipes["generate"]
    for other in (pipes["edit"], pipes["inpaint"]):
        assert (
            other.unet is main.unet
            and other.vae is main.vae
            and other.text_encoder is main.text_encoder
        )


def test_generate_and_edit_on_the_cpu(tiny_pipeline: Path) -> None:
    model = load(tiny_pipeline)
    images = model.generate(
        GenerateJob(
            prompt="p",
            n=2,
            width=128,
            height=64,
            steps=2,
            seed=1,
            guidance=3.0,
            negative_prompt="n",
        )
    )
    assert [im.size for im in images] == [(128, 64)] * 2
    source = Image.new("RGB", (64, 64), (10, 200, 10))
    edited = model.edit(
        EditJob(prompt="p", image=source, n=1, width=64, height=64, steps=2, seed=1, strength=0.5)
    )
    assert [im.size for im in edited] == [(64, 64)]
    inpainted = model.edit(
        EditJob(
            prompt="p",
            image=source,
            mask=Image.new("L", (64, 64), 255),
            n=1,
            width=64,
            height=64,
            steps=2,
            seed=1,
        )
    )
    assert [im.size for im in inpainted] == [(64, 64)]


def test_the_step_meter_counts_the_real_pipelines_steps(tiny_pipeline: Path) -> None:
    model = load(tiny_pipeline)
    seen: list[tuple[bool, int, int]] = []
    original = model._on_step

    def spy(pipe, index, timestep, kwargs):  # noqa: ANN001, ANN202
        out = original(pipe, index, timestep, kwargs)
        seen.append((model.meter.running, model.meter.step, model.meter.steps))
        return out

    model._on_step = spy
    model.generate(GenerateJob(prompt="p", n=1, width=64, height=64, steps=3, seed=1))
    assert seen == [(True, 1, 3), (True, 2, 3), (True, 3, 3)]
    assert model.meter.snapshot() == ImageProgress(running=False, step=3, steps=3)
    seen.clear()
    source = Image.new("RGB", (64, 64), (10, 200, 10))
    model.edit(
        EditJob(prompt="p", image=source, n=1, width=64, height=64, steps=4, seed=1, strength=0.5)
    )
    assert seen == [(True, 1, 2), (True, 2, 2)]  # strength 0.5 of 4 steps: 2 run


def test_bf16_and_the_memory_options_load_and_generate(tiny_pipeline: Path) -> None:
    import torch

    model = load(
        tiny_pipeline, dtype="bf16", attention_slicing=True, vae_tiling=True, cpu_offload=True
    )
    main = model.pipelines["generate"]
    assert main.unet.dtype == torch.bfloat16
    assert main.vae.use_tiling is True
    images = model.generate(GenerateJob(prompt="p", n=1, width=64, height=64, steps=1, seed=0))
    assert images[0].size == (64, 64)


def test_an_edit_only_model_refuses_to_generate(tiny_edit_pipeline: Path) -> None:
    model = load(tiny_edit_pipeline)
    assert (model.capabilities.generate, model.capabilities.edit) == (False, True)
    with pytest.raises(UnsupportedTask, match="image-editing model"):
        model.generate(GenerateJob(prompt="p", n=1, width=64, height=64, steps=1, seed=0))


def test_an_edit_with_less_than_one_denoising_step_is_a_400(tiny_pipeline: Path) -> None:
    model = load(tiny_pipeline)
    job = EditJob(
        prompt="p", image=Image.new("RGB", (64, 64)), n=1, width=64, height=64, steps=1, seed=0
    )
    with pytest.raises(InvalidRequest, match="less than one denoising step") as info:
        model.edit(job)  # the default strength 0.8 x 1 step = 0 steps
    assert info.value.param == "steps"


def test_out_of_memory_in_the_pipeline_is_reported_and_the_model_keeps_working(
    tiny_pipeline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    model = load(tiny_pipeline)
    unet = model.pipelines["generate"].unet
    job = GenerateJob(prompt="p", n=1, width=64, height=64, steps=1, seed=0)

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(unet, "forward", out_of_memory)
    with pytest.raises(OutOfMemory, match="out of memory on cpu making 1 image") as info:
        model.generate(job)
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(unet, "forward", broken)
    with pytest.raises(GenerationFailed, match="RuntimeError: shape mismatch"):
        model.generate(job)
    monkeypatch.undo()
    assert [im.size for im in model.generate(job)] == [(64, 64)]


def test_asking_for_a_missing_cuda_device_fails_clearly(tiny_pipeline: Path) -> None:
    with pytest.raises(LoadFailed, match="cuda:99"):
        load(tiny_pipeline, device="cuda:99")


def test_a_missing_folder_fails_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(LoadFailed, match="cannot load pipeline from") as info:
        load(tmp_path / "nothing-here")
    assert "nothing-here" in str(info.value)


def test_a_job_nobody_waits_for_stops_at_its_next_step(tiny_pipeline: Path) -> None:
    """The real pipeline honours `job.stop` through callback_on_step_end: one denoising
    step runs (the callback comes after it), not the 20 asked for."""
    model = load(tiny_pipeline)
    unet = model.pipelines["generate"].unet
    calls = []
    forward = unet.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    unet.forward = counting
    job = GenerateJob(prompt="p", n=1, width=64, height=64, steps=20, seed=1, guidance=1.0)
    job.stop.set()
    model.generate(job)
    assert len(calls) == 1
    calls.clear()
    model.generate(GenerateJob(prompt="p", n=1, width=64, height=64, steps=3, seed=1, guidance=1.0))
    assert len(calls) == 3
