"""What a loaded image model is, seen from the HTTP layer: jobs in, PIL images out.

`DiffusersModel` (imageserver.diffusers_model) is the real implementation;
unit tests use a fake behind the same `ImageModel` protocol. The methods
block (they run the pipeline) and are only ever called from the one GPU
worker thread (imageserver.worker), so implementations need no locking.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from wire.model_server import ImageProgress

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass(frozen=True)
class Capabilities:
    """What the loaded pipeline can do, decided once at load time."""

    pipeline: str
    """The main pipeline's class name, e.g. 'StableDiffusionXLPipeline'."""
    generate: bool
    """Text to image (POST /v1/images/generations)."""
    edit: bool
    """Image to image without a mask (POST /v1/images/edits without `mask`)."""
    inpaint: bool
    """Masked edits (POST /v1/images/edits with `mask`)."""

    @property
    def main_task(self) -> str:
        """'generate' or 'edit': what the model was built for (edit-only models say 'edit')."""
        return "generate" if self.generate else "edit"


@dataclass(frozen=True)
class GenerateJob:
    """One text-to-image request, already validated."""

    prompt: str
    n: int
    width: int
    height: int
    steps: int
    seed: int
    guidance: float | None = None
    negative_prompt: str | None = None
    stop: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)
    """Set when nobody waits for the result any more (the client left): a model stops the
    job at its next denoising step (`ImageModel`)."""


@dataclass(frozen=True)
class EditJob:
    """One edit request, already validated; `image` (RGB) and `mask` are at width x height."""

    prompt: str
    image: Image
    n: int
    width: int
    height: int
    steps: int
    seed: int
    mask: Image | None = None
    """Mode 'L', white = repaint, black = keep (diffusers' convention)."""
    guidance: float | None = None
    negative_prompt: str | None = None
    strength: float | None = None
    stop: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)
    """As GenerateJob.stop."""


@dataclass
class StepMeter:
    """The diffusion steps of the generation running now (``GET /v1/progress``).

    Written by the worker thread (the pipeline's step callback), read by the event
    loop: plain attribute writes, a reader may see one step old. `step` counts the
    current picture's finished steps; `steps` is that picture's total (img2img runs
    fewer than `steps` x 1 when `strength` < 1)."""

    running: bool = False
    step: int = 0
    steps: int = 0

    def snapshot(self) -> ImageProgress:
        return ImageProgress(running=self.running, step=self.step, steps=self.steps)


@runtime_checkable
class ImageModel(Protocol):
    """A loaded pipeline. Calls block; one at a time (the worker guarantees it)."""

    capabilities: Capabilities

    def generate(self, job: GenerateJob) -> list[Image]:
        """Run text to image; returns `job.n` images of the job's size.

        Raises OutOfMemory (the server stays up) or GenerationFailed. Once `job.stop` is
        set the pipeline is interrupted at its next step and the result is worthless.
        """

    def edit(self, job: EditJob) -> list[Image]:
        """Run image to image (mask None) or inpainting; returns `job.n` images.

        Raises UnsupportedTask if the pipeline cannot, OutOfMemory, GenerationFailed.
        """
