"""The model worker: one dedicated thread runs every model call, in arrival order.

Loading, the warm-up and each request run on the same single thread, so two never
touch the model (and its GPU memory) at once and the event loop (and ``/health``) stays
free. Requests beyond the running one wait in a FIFO bounded by `queue_limit`; one more
is refused at once with `QueueFull` (HTTP 429).

`run` awaits one call; `stream` runs a generator on the thread and hands its items to
the event loop as they come (a transcription's segments, speech sentence by sentence).
A streamed job whose reader goes away stops before its next item (`Stream.aclose`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from audioserver.errors import QueueFull

T = TypeVar("T")

_END = object()


class Worker:
    """Serialises blocking jobs on one thread with a bounded wait queue."""

    def __init__(self, queue_limit: int) -> None:
        self.queue_limit = queue_limit
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audioserver")
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
                raise QueueFull(
                    f"the audio server is busy: 1 request is running and {self.queue_limit} "
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

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the worker thread once every earlier job is done. Raises
        QueueFull at once when full. Cancelling drops a waiting job; a running one
        finishes and its result is dropped. Exceptions of `fn` propagate."""
        self._admit()
        try:
            future = self._executor.submit(self._timed, fn, *args)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    async def stream(self, produce: Callable[[], Iterator[T]]) -> Stream[T]:
        """Run the generator `produce()` on the worker thread; return once its first
        item is there (so an error before it, such as audio that does not decode, is
        raised here, before an answer starts). Raises QueueFull at once when full.
        Iterate the `Stream` for the rest; close it to stop the job early."""
        self._admit()
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def put(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody reads
                loop.call_soon_threadsafe(items.put_nowait, item)

        def pump() -> None:
            try:
                for item in produce():
                    if stop.is_set():
                        return
                    put(item)
            except BaseException as exc:  # handed to the reader, raised there
                put(_Failure(exc))
                return
            put(_END)

        try:
            future = self._executor.submit(self._timed, pump)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        stream: Stream[T] = Stream(items, stop)
        try:
            await stream.prefetch()
        except BaseException:
            stop.set()
            raise
        return stream

    def shutdown(self) -> None:
        """Drop waiting jobs and stop accepting new ones. Does not wait for the running one."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Stream(Generic[T]):
    """The items of a streamed job, in order, as the worker makes them."""

    def __init__(self, items: asyncio.Queue[Any], stop: threading.Event) -> None:
        self._items, self._stop = items, stop
        self._first: Any = _END
        self._done = False

    async def _next(self) -> Any:
        item = await self._items.get()
        if isinstance(item, _Failure):
            self._done = True
            raise item.exc
        if item is _END:
            self._done = True
        return item

    async def prefetch(self) -> None:
        self._first = await self._next()

    async def __aiter__(self) -> AsyncIterator[T]:
        try:
            item, self._first = self._first, _END
            while item is not _END:
                yield item
                item = await self._next()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the job before its next item (no-op once it ended)."""
        self._stop.set()
