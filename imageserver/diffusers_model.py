"""The real model: a diffusers pipeline loaded once, with edit pipelines sharing its weights.

`load_diffusers_model(settings)` blocks for as long as loading takes (minutes
for a large model) and raises LoadFailed with a one-line reason. It is
called on the GPU worker thread only; this module imports torch, so the HTTP
layer imports it lazily (the port is up before torch is).

Loading: `DiffusionPipeline.from_pretrained` picks the class named in the
model's model_index.json (Stable Diffusion, SDXL, FLUX, Qwen-Image,
Qwen-Image-Edit, ... need no code here); `imageserver.classify` decides what
it can do, and edit/inpaint pipelines are made with
`AutoPipelineForImage2Image.from_pipe` / `AutoPipelineForInpainting.from_pipe`
(the same modules, no second copy of the weights). Quantization and offloading
follow the model's loading options (`imageserver.loading`); then the device, offload,
attention slicing and VAE slicing/tiling options are applied.

Generation: `torch.OutOfMemoryError` (or a backend's "out of memory"
RuntimeError) becomes OutOfMemory after freeing the cached memory; anything
else the pipeline raises becomes GenerationFailed. Both leave the model
loaded and usable.
"""

from __future__ import annotations

import gc
import inspect
import logging
import threading
from typing import Any

import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, DiffusionPipeline
from diffusers.pipelines.auto_pipeline import (
    AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
    AUTO_INPAINT_PIPELINES_MAPPING,
    AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
)
from PIL.Image import Image

from imageserver import loading
from imageserver.classify import SELF, guidance_parameter, plan_pipelines, resolve_device
from imageserver.errors import (
    GenerationFailed,
    ImageServerError,
    InvalidRequest,
    LoadFailed,
    OutOfMemory,
    UnsupportedTask,
)
from imageserver.model import Capabilities, EditJob, GenerateJob, StepMeter
from imageserver.settings import Settings
from wire.image_options import ImageLoaded

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _names(table: Any) -> dict[str, str]:
    return {family: cls.__name__ for family, cls in table.items()}


def _call_params(pipe: DiffusionPipeline) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(pipe.__call__).parameters)


def _oneline(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_diffusers_model(settings: Settings) -> DiffusersModel:
    """Load, plan and place the pipeline. Blocks. Raises LoadFailed with the reason."""
    device = resolve_device(
        settings.device,
        cuda_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
        mps_available=bool(
            getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        ),
        torch_cuda=torch.version.cuda,
    )
    loading.check_environment(settings, cuda=device.startswith("cuda"))
    extra, encoders = loading.pretrained_kwargs(settings, DTYPES[settings.dtype])
    try:
        main = DiffusionPipeline.from_pretrained(
            settings.model, dtype=DTYPES[settings.dtype], **extra
        )
    except Exception as exc:
        raise LoadFailed(f"cannot load pipeline from {settings.model!r}: {_oneline(exc)}") from exc
    if not isinstance(main, DiffusionPipeline):
        raise LoadFailed(f"{settings.model!r} did not load as a diffusers pipeline")
    plan = plan_pipelines(
        type(main).__name__,
        _names(AUTO_TEXT2IMAGE_PIPELINES_MAPPING),
        _names(AUTO_IMAGE2IMAGE_PIPELINES_MAPPING),
        _names(AUTO_INPAINT_PIPELINES_MAPPING),
        _call_params(main),
    )
    edit = _derive(main, plan.edit, AutoPipelineForImage2Image)
    inpaint = _derive(main, plan.inpaint, AutoPipelineForInpainting)
    generate = main if plan.generate == SELF else None
    if generate is None and edit is None and inpaint is None:
        raise LoadFailed(f"{type(main).__name__} can neither generate nor edit images")
    pipelines = [p for p in {id(p): p for p in (edit, inpaint, main) if p is not None}.values()]
    _place(pipelines, main, settings, device)
    for pipe in pipelines:
        pipe.set_progress_bar_config(disable=True)
    model = DiffusersModel(generate=generate, edit=edit, inpaint=inpaint, main=main, device=device)
    model.loaded = loading.loaded(main, settings, device, encoders)
    return model


def _derive(main: DiffusionPipeline, target: str | None, auto: Any) -> DiffusionPipeline | None:
    """The pipeline serving one task: `main` itself, one built from it, or None.

    A family pipeline that cannot be built from these components (a
    mismatching module) is logged and the task left unsupported: the model
    still serves its main job.
    """
    if target is None:
        return None
    if target == SELF:
        return main
    try:
        return auto.from_pipe(main)
    except Exception as exc:  # diffusers raises ValueError/TypeError for missing modules
        log.warning(
            "cannot build %s from %s (%s); that task is off",
            target,
            type(main).__name__,
            _oneline(exc),
        )
        return None


def _place(
    pipelines: list[DiffusionPipeline], main: DiffusionPipeline, settings: Settings, device: str
) -> None:
    """Device, offloading and memory options (`imageserver.loading.place`), worded as
    LoadFailed."""
    try:
        loading.place(pipelines, main, settings, device)
    except torch.OutOfMemoryError as exc:
        raise LoadFailed(
            f"out of memory placing the model on {device}: {_oneline(exc)}; "
            "try offload, quantize, a smaller dtype, or a smaller model"
        ) from exc
    except Exception as exc:
        raise LoadFailed(f"cannot place the model on {device}: {_oneline(exc)}") from exc


class DiffusersModel:
    """A loaded diffusers model; implements `imageserver.model.ImageModel`. Not thread-safe:
    the GPU worker calls it from one thread."""

    def __init__(
        self,
        *,
        generate: DiffusionPipeline | None,
        edit: DiffusionPipeline | None,
        inpaint: DiffusionPipeline | None,
        main: DiffusionPipeline,
        device: str,
    ) -> None:
        self._generate, self._edit, self._inpaint = generate, edit, inpaint
        self._device = device
        self.capabilities = Capabilities(
            pipeline=type(main).__name__,
            generate=generate is not None,
            edit=edit is not None,
            inpaint=inpaint is not None,
        )
        config = getattr(getattr(main, "transformer", None), "config", None)
        self._guidance_embeds = bool(config is not None and config.get("guidance_embeds", False))
        self.meter = StepMeter()
        self.loaded: ImageLoaded | None = None
        """How it was loaded (`imageserver.loading.loaded`), for ``/health``."""
        self._stop: threading.Event | None = None
        """The running job's `stop` (one job at a time, on the worker thread)."""
        """Steps of the running generation, for ``GET /v1/progress``."""

    @property
    def pipelines(self) -> dict[str, DiffusionPipeline]:
        """The pipeline serving each supported task ('generate', 'edit', 'inpaint')."""
        tasks = {"generate": self._generate, "edit": self._edit, "inpaint": self._inpaint}
        return {task: pipe for task, pipe in tasks.items() if pipe is not None}

    def generate(self, job: GenerateJob) -> list[Image]:
        if self._generate is None:
            raise UnsupportedTask(
                f"{self.capabilities.pipeline} is an image-editing model; use /v1/images/edits"
            )
        args: dict[str, Any] = {"prompt": job.prompt, "height": job.height, "width": job.width}
        return self._run(self._generate, args, job)

    def edit(self, job: EditJob) -> list[Image]:
        pipe = self._inpaint if job.mask is not None else self._edit
        if pipe is None:
            what = "masked edits (inpainting)" if job.mask is not None else "edits without a mask"
            raise UnsupportedTask(f"{self.capabilities.pipeline} cannot do {what}", param="mask")
        args: dict[str, Any] = {"prompt": job.prompt, "image": job.image}
        if job.mask is not None:
            args["mask_image"] = job.mask
        params = _call_params(pipe)
        if "height" in params and "width" in params:
            args["height"], args["width"] = job.height, job.width
        if job.strength is not None:
            if "strength" not in params:
                raise InvalidRequest(
                    f"{type(pipe).__name__} does not take 'strength'", param="strength"
                )
            args["strength"] = job.strength
        if "strength" in params:
            strength = job.strength if job.strength is not None else params["strength"].default
            if isinstance(strength, int | float) and int(job.steps * strength) < 1:
                raise InvalidRequest(
                    f"steps ({job.steps}) x strength ({strength:g}) is less than one denoising "
                    "step; raise steps or strength",
                    param="steps",
                )
        return self._run(pipe, args, job)

    def _run(
        self, pipe: DiffusionPipeline, args: dict[str, Any], job: GenerateJob | EditJob
    ) -> list[Image]:
        params = _call_params(pipe)
        args["num_inference_steps"] = job.steps
        if job.guidance is not None:
            name = guidance_parameter(params, self._guidance_embeds)
            if name is None:
                raise InvalidRequest(f"{type(pipe).__name__} takes no guidance", param="guidance")
            args[name] = job.guidance
        if job.negative_prompt is not None:
            if "negative_prompt" not in params:
                raise InvalidRequest(
                    f"{type(pipe).__name__} does not take a negative prompt",
                    param="negative_prompt",
                )
            args["negative_prompt"] = job.negative_prompt
        args = {k: v for k, v in args.items() if k in params or k == "prompt"}
        self._stop = job.stop
        meter = self.meter
        meter.running, meter.step, meter.steps = True, 0, job.steps
        try:
            if "num_images_per_prompt" in params:
                return self._call(pipe, args, job.n, job.seed)
            images: list[Image] = []
            for i in range(job.n):
                images += self._call(pipe, args, None, job.seed + i)
            return images
        except ImageServerError:
            raise
        except torch.OutOfMemoryError as exc:
            self._free()
            raise OutOfMemory(self._oom_message(job, exc)) from exc
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                self._free()
                raise OutOfMemory(self._oom_message(job, exc)) from exc
            raise GenerationFailed(f"the pipeline failed: {_oneline(exc)}") from exc
        except Exception as exc:
            raise GenerationFailed(f"the pipeline failed: {_oneline(exc)}") from exc
        finally:
            meter.running = False

    def _on_step(
        self, pipe: DiffusionPipeline, index: int, timestep: Any, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """diffusers' ``callback_on_step_end``: count the step; once nobody waits for the job
        (`job.stop`), interrupt the pipeline (diffusers' ``_interrupt`` skips the remaining
        steps)."""
        total = getattr(pipe, "num_timesteps", None)
        if isinstance(total, int) and total > 0:
            self.meter.steps = total
        self.meter.step = index + 1
        if self._stop is not None and self._stop.is_set():
            pipe._interrupt = True
        return kwargs

    def _call(
        self, pipe: DiffusionPipeline, args: dict[str, Any], n: int | None, seed: int
    ) -> list[Image]:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        extra: dict[str, Any] = {"generator": generator, "output_type": "pil"}
        if "callback_on_step_end" in _call_params(pipe):
            extra["callback_on_step_end"] = self._on_step
        self.meter.step = 0
        if n is not None:
            extra["num_images_per_prompt"] = n
        output = pipe(**args, **extra)
        return list(output.images)

    def _oom_message(self, job: GenerateJob | EditJob, exc: BaseException) -> str:
        return (
            f"out of memory on {self._device} making {job.n} image(s) of {job.width}x{job.height}: "
            f"{_oneline(exc)}; try a smaller size or n, or enable cpu_offload / vae_tiling"
        )

    def _free(self) -> None:
        gc.collect()
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()
