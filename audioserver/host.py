"""Loading the model in the background and reporting where that stands.

`ModelHost.start()` queues the load (and a warm-up) on the worker and returns at once,
so the HTTP port is up from the first second. `status` moves `loading -> ready` or
`loading -> failed` exactly once; the failure reason is what ``/health`` shows and what
the manager puts in its error. A failed server stays up (answering 503) until stopped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from audioserver.errors import LoadFailed, ModelNotReady
from audioserver.settings import Settings
from audioserver.worker import Worker
from wire.model_server import ImageServerStatus

log = logging.getLogger(__name__)

M = TypeVar("M")
Loader = Callable[[Settings], object]
"""Builds the model (a `stt.Transcriber` or a `tts.Speaker`); blocks; raises LoadFailed
(or anything, reported as the reason). A `warm_up()` method, if it has one, runs next."""


class ModelHost(Generic[M]):
    """Owns the one model: its load, its warm-up, and its status."""

    def __init__(self, settings: Settings, loader: Callable[[Settings], M], worker: Worker) -> None:
        self.settings = settings
        self._loader = loader
        self._worker = worker
        self._lock = threading.Lock()
        self._status: ImageServerStatus = "loading"
        self._error: str | None = None
        self._model: M | None = None
        self._started = False

    def snapshot(self) -> tuple[ImageServerStatus, str | None]:
        """(status, error) read together."""
        with self._lock:
            return self._status, self._error

    def start(self) -> None:
        """Queue load + warm-up on the worker thread. Returns at once. Idempotent."""
        with self._lock:
            if self._started:
                return
            self._started = True
        self._worker.submit_background(self._load)

    def ready_model(self) -> M:
        """The loaded model. Raises ModelNotReady while loading or after a failed load."""
        name = self.settings.served_name
        with self._lock:
            if self._status == "ready" and self._model is not None:
                return self._model
            if self._status == "failed":
                raise ModelNotReady(f"model {name!r} failed to load: {self._error}", failed=True)
        raise ModelNotReady(f"model {name!r} is still loading; retry shortly", failed=False)

    def _load(self) -> None:
        try:
            log.info("loading %s (%s)", self.settings.model, self.settings.type)
            model = self._loader(self.settings)
            warm_up = getattr(model, "warm_up", None)
            if warm_up is not None:
                try:
                    warm_up()
                except Exception as exc:
                    raise LoadFailed(f"the warm-up failed: {exc}") from exc
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
        log.info("model %s is ready", self.settings.served_name)
