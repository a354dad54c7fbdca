"""Parking: the loaded pipeline moved to the CPU and back, the image server's warm tier.

The manager keeps an image model *warm* (models.json ``warm``) by parking it instead of
stopping the server: ``POST /park`` moves every pipeline's modules to the CPU
(``pipe.to("cpu")``, then the CUDA cache is emptied) so the GPU memory is free, and
``POST /unpark`` moves them back to the model's device; ``GET /is_parked`` answers
``{"is_parked": bool}`` (the manager's adoption asks it after a restart). The moves run
on the GPU worker thread, after the generations queued before them, so a generation
never sees a half-moved pipeline. While parked, a generation or edit is refused with
503 ``model_parked`` (the manager sends none: a sleeping model gets no leases).

On the CPU the move is a no-op (the modules are there already), but the state, the API
and the accounting are the real ones. Quantized pipelines (GGUF, torchao, quanto) park:
their tensors carry the quantized data along. A pipeline with any ``offload`` (or
``cpu_offload``) cannot be parked, on any device (`wire.image_options.park_problem`: its
hooks own where each module lives; the manager's models.json check refuses ``warm`` with
it), nor one whose modules refuse the move (an old bitsandbytes): 409 ``cannot_park``
(the manager then stops the server instead, and does not try to park it again until it
is restarted). A move that fails half way is undone (the moved modules go back), so the
model keeps serving where it was. Both routes are idempotent and need the upstream key,
as every route but ``/health``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from imageserver.errors import ImageServerError
from imageserver.host import ModelHost
from imageserver.settings import Settings
from imageserver.worker import GpuWorker
from wire.image_options import park_problem

log = logging.getLogger(__name__)


class CannotPark(ImageServerError):
    """The pipeline cannot be parked (it is offloaded, or its modules refuse the move)."""

    status, type, code = 409, "invalid_request_error", "cannot_park"


class ModelParked(ImageServerError):
    """A generation while the pipeline is parked on the CPU."""

    status, type, code = 503, "server_error", "model_parked"


def move(model: object, device: str) -> None:
    """Move every pipeline of `model` (its ``pipelines``; they share modules) to `device`,
    then free the CUDA cache when leaving a GPU. Blocks (the worker thread)."""
    pipelines = getattr(model, "pipelines", {})
    seen: set[int] = set()
    for pipe in pipelines.values():
        if id(pipe) not in seen:
            seen.add(id(pipe))
            pipe.to(device)
    if device == "cpu":
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # a model without torch (the unit tier's fakes)
            pass


class Parking:
    """Whether the one model is parked, and the moves. `park` and `unpark` are coroutines
    that queue the move on the GPU worker and return once it is done."""

    def __init__(self, settings: Settings, host: ModelHost, worker: GpuWorker) -> None:
        self._settings, self._host, self._worker = settings, host, worker
        self._lock = threading.Lock()
        self._parked = False
        self.moves = 0
        """Moves done (either way), for tests and logs."""

    @property
    def parked(self) -> bool:
        with self._lock:
            return self._parked

    def check_not_parked(self) -> None:
        """Raise ModelParked while the pipeline waits on the CPU."""
        if self.parked:
            raise ModelParked(
                f"model {self._settings.served_name!r} is parked in host memory; the manager "
                "unparks it before sending requests"
            )

    async def park(self) -> None:
        problem = park_problem(self._settings.load_offload)
        if problem is not None:
            raise CannotPark(f"model {self._settings.served_name!r}: {problem}")
        model = self._host.ready_model()
        if self.parked:
            return
        await asyncio.wrap_future(
            self._worker.submit_background(lambda: self._move(model, "cpu", parked=True))
        )

    async def unpark(self) -> None:
        model = self._host.ready_model()
        if not self.parked:
            return
        home = self._settings.device
        await asyncio.wrap_future(
            self._worker.submit_background(lambda: self._move(model, home, parked=False))
        )

    def _move(self, model: object, device: str, *, parked: bool) -> None:
        with self._lock:
            if self._parked == parked:
                return
        try:
            move(model, device)
        except Exception as exc:  # e.g. bitsandbytes-quantized modules refuse `.to()`
            self._undo(model, device, parked=parked)
            raise CannotPark(
                f"the pipeline cannot be moved to {device}: {type(exc).__name__}: {exc}"
            ) from exc
        with self._lock:
            self._parked = parked
            self.moves += 1
        log.info(
            "model %s %s",
            self._settings.served_name,
            "parked on the CPU" if parked else f"back on {device}",
        )

    def _undo(self, model: object, failed: str, *, parked: bool) -> None:
        """Put back what a failed move to `failed` moved: the pipelines return to where
        they were (the device when parking, the CPU when unparking)."""
        back = self._settings.device if parked else "cpu"
        try:
            move(model, back)
        except Exception:
            log.exception(
                "model %s: a failed move to %s could not be undone; its modules may be split "
                "between %s and %s",
                self._settings.served_name,
                failed,
                failed,
                back,
            )


def _parking(request: Request) -> Parking:
    parking: Parking = request.app.state.parking
    return parking


ParkingDep = Annotated[Parking, Depends(_parking)]
router = APIRouter()


@router.post("/park")
async def park(parking: ParkingDep) -> Response:
    """Move the pipeline to the CPU (the manager puts the model to sleep)."""
    await parking.park()
    return Response(status_code=200)


@router.post("/unpark")
async def unpark(parking: ParkingDep) -> Response:
    """Move the pipeline back to its device (the manager wakes the model)."""
    await parking.unpark()
    return Response(status_code=200)


@router.get("/is_parked")
async def is_parked(parking: ParkingDep) -> dict[str, Any]:
    return {"is_parked": parking.parked}
