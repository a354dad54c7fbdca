"""Loading the model in the background and reporting where that stands.

`ModelHost.start()` queues the load (then a warm-up generation) on the GPU
worker and returns at once, so the HTTP port is up from the first second.
`status` moves `loading -> ready` or `loading -> failed` exactly once; the
failure reason is what `/health` shows and what the manager puts in its
error. A failed server stays up (answering 503) until it is stopped: the
manager reads the reason, then stops it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from PIL import Image

from imageserver.errors import LoadFailed, ModelNotReady
from imageserver.model import EditJob, GenerateJob, ImageModel
from imageserver.settings import Settings
from imageserver.worker import GpuWorker
from wire.model_server import ImageServerStatus

log = logging.getLogger(__name__)

Status = ImageServerStatus
"""What ``GET /health`` says (`wire.model_server.ImageHealth`)."""
Loader = Callable[[Settings], ImageModel]
"""Builds the model; blocks; raises LoadFailed (or anything, reported as the reason)."""

WARMUP_SEED = 0
EDIT_WARMUP_MIN_STEPS = 4
"""An edit runs int(steps * strength) denoising steps; 4 covers default strengths down to 0.25."""


class ModelHost:
    """Owns the one model: its load, its warm-up, and its status."""

    def __init__(self, settings: Settings, loader: Loader, worker: GpuWorker) -> None:
        self.settings = settings
        self._loader = loader
        self._worker = worker
        self._lock = threading.Lock()
        self._status: Status = "loading"
        self._error: str | None = None
        self._model: ImageModel | None = None
        self._started = False

    @property
    def status(self) -> Status:
        with self._lock:
            return self._status

    @property
    def error(self) -> str | None:
        """Why loading failed; None unless status is 'failed'."""
        with self._lock:
            return self._error

    def snapshot(self) -> tuple[Status, str | None]:
        """(status, error) read together, so a reader never sees one without the other."""
        with self._lock:
            return self._status, self._error

    def start(self) -> None:
        """Queue load + warm-up on the worker thread. Returns at once. Idempotent."""
        with self._lock:
            if self._started:
                return
            self._started = True
        self._worker.submit_background(self._load_and_warm_up)

    def ready_model(self) -> ImageModel:
        """The loaded model. Raises ModelNotReady while loading or after a failed load."""
        with self._lock:
            if self._status == "ready" and self._model is not None:
                return self._model
            if self._status == "failed":
                raise ModelNotReady(
                    f"model {self.settings.served_name!r} failed to load: {self._error}",
                    failed=True,
                )
        raise ModelNotReady(
            f"model {self.settings.served_name!r} is still loading; retry shortly", failed=False
        )

    def _load_and_warm_up(self) -> None:
        try:
            log.info("loading %s", self.settings.model)
            model = self._loader(self.settings)
            self._warm_up(model)
        except BaseException as exc:  # the reason must reach /health, whatever it is
            reason = str(exc) if isinstance(exc, LoadFailed) else f"{type(exc).__name__}: {exc}"
            log.error("model %s failed to load: %s", self.settings.model, reason, exc_info=exc)
            with self._lock:
                self._status, self._error = "failed", reason
            if not isinstance(exc, Exception):
                raise
            return
        with self._lock:
            self._model, self._status = model, "ready"
        log.info("model %s is ready (%s)", self.settings.served_name, model.capabilities)

    def _warm_up(self, model: ImageModel) -> None:
        """One small generation (or edit, for edit-only models) so the first request is not slow
        and a broken pipeline shows up as 'failed' rather than on the first client."""
        steps = self.settings.warmup_steps
        if steps == 0:
            return
        width, height = min(self.settings.size_pairs, key=lambda wh: wh[0] * wh[1])
        try:
            if model.capabilities.generate:
                model.generate(
                    GenerateJob(
                        prompt="warm-up",
                        n=1,
                        width=width,
                        height=height,
                        steps=steps,
                        seed=WARMUP_SEED,
                    )
                )
            elif model.capabilities.edit or model.capabilities.inpaint:
                # Image-to-image runs only steps x strength of its steps: give it enough for one.
                steps = max(steps, EDIT_WARMUP_MIN_STEPS)
                mask = None if model.capabilities.edit else Image.new("L", (width, height), 255)
                model.edit(
                    EditJob(
                        prompt="warm-up",
                        image=Image.new("RGB", (width, height), (128, 128, 128)),
                        n=1,
                        width=width,
                        height=height,
                        steps=steps,
                        seed=WARMUP_SEED,
                        mask=mask,
                    )
                )
        except Exception as exc:
            raise LoadFailed(f"warm-up generation at {width}x{height} failed: {exc}") from exc
