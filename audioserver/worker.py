"""The model worker: one dedicated thread runs every model call, in arrival order.

Loading, the warm-up and each request run on the same single thread, so two never
touch the model (and its GPU memory) at once and the event loop (and ``/health``) stays
free. Requests beyond the running one wait in a FIFO bounded by `queue_limit`; one more
is refused at once with `QueueFull` (HTTP 429).

The mechanism is `wire.worker.ModelWorker` (shared with the image server). `run`
awaits one call; `stream` runs a generator on the thread and hands its items to
the event loop as they come (a transcription's segments, speech sentence by sentence).
A streamed job whose reader goes away stops before its next item (`Stream.aclose`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

from audioserver.errors import QueueFull
from wire.worker import ModelWorker

T = TypeVar("T")

_END = object()


class Worker(ModelWorker):
    """`wire.worker.ModelWorker` with the audio server's thread and `QueueFull`, plus
    `stream`."""

    def __init__(self, queue_limit: int) -> None:
        super().__init__(
            queue_limit,
            thread="audioserver",
            server="audio server",
            busy="1 request is running",
            refusal=QueueFull,
        )

    async def stream(self, produce: Callable[[], Iterator[T]]) -> Stream[T]:
        """Run the generator `produce()` on the worker thread; return once its first
        item is there (so an error before it, such as audio that does not decode, is
        raised here, before an answer starts). Raises QueueFull at once when full.
        Iterate the `Stream` for the rest; close it to stop the job early."""
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

        self._submit(pump)
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
