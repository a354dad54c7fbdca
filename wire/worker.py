"""*Utility*: the model worker of our model servers (image, audio): one dedicated thread
runs every model call, in arrival order.

Loading, the warm-up and each request run on the same single thread, so two never
touch the model (and its GPU memory) at once and the event loop (and ``/health``) stays
free. Requests beyond the running one wait in a FIFO bounded by `queue_limit`; one more
is refused at once with the server's own 429 error (`refusal`).

Cancellation: a caller cancelled while its job is still waiting removes the job from
the queue. A job that is already running cannot be interrupted (torch offers no way);
it finishes and its result is dropped, and the next job still starts only after it.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

Refusal = Callable[..., Exception]
"""The server's queue-full error: ``refusal(message, retry_after=seconds)``."""


class ModelWorker:
    """Serialises blocking jobs on one thread (named `thread`) with a bounded wait queue.
    The refusal says "the `server` is busy: `busy` and N are waiting"."""

    def __init__(
        self, queue_limit: int, *, thread: str, server: str, busy: str, refusal: Refusal
    ) -> None:
        self.queue_limit = queue_limit
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread)
        self._server, self._busy, self._refusal = server, busy, refusal
        self._lock = threading.Lock()
        self._admitted = 0  # requests submitted and not finished: running + waiting
        self._last_seconds = 0.0  # how long the last request job ran

    @property
    def admitted(self) -> int:
        """Requests running or waiting right now (background jobs not counted)."""
        with self._lock:
            return self._admitted

    def submit_background(self, fn: Callable[[], T]) -> Future[T]:
        """Queue a job that does not count against the limit (loading). Does not block."""
        return self._executor.submit(fn)

    def _admit(self) -> None:
        with self._lock:
            if self._admitted >= 1 + self.queue_limit:
                raise self._refusal(
                    f"the {self._server} is busy: {self._busy} and {self.queue_limit} "
                    "are waiting; retry later",
                    retry_after=max(1, math.ceil(self._last_seconds * self._admitted)),
                )
            self._admitted += 1

    def _release(self, _future: object = None) -> None:
        with self._lock:
            self._admitted -= 1

    def _timed(self, fn: Callable[..., T], *args: object) -> T:
        started = time.monotonic()
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._last_seconds = time.monotonic() - started

    def _submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Admit, then queue `fn(*args)`, timed; released when it ends."""
        self._admit()
        try:
            future = self._executor.submit(self._timed, fn, *args)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return future

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the worker thread once every earlier job is done. Raises the
        refusal at once when full. Exceptions of `fn` propagate."""
        return await asyncio.wrap_future(self._submit(fn, *args))

    def shutdown(self) -> None:
        """Drop waiting jobs and stop accepting new ones. Does not wait for the running one."""
        self._executor.shutdown(wait=False, cancel_futures=True)
