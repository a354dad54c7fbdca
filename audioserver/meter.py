"""`Meter`: how far the request running now has got, for ``GET /v1/progress``
(`wire.model_server.AudioProgress`): a speech answer's sentences spoken of all its
sentences, a transcription's seconds heard of the audio's seconds. Written by the model
on the worker thread, read by the event loop; one request runs at a time."""

from __future__ import annotations

import threading

from wire.model_server import AudioProgress


class Meter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running, self._step, self._steps = False, 0, 0

    def begin(self, steps: int) -> None:
        with self._lock:
            self._running, self._step, self._steps = True, 0, steps

    def advance(self, step: int) -> None:
        with self._lock:
            self._step = min(step, self._steps)

    def end(self) -> None:
        with self._lock:
            self._running, self._step, self._steps = False, 0, 0

    def snapshot(self) -> AudioProgress:
        with self._lock:
            return AudioProgress(running=self._running, step=self._step, steps=self._steps)
