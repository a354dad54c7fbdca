"""The GPU worker: one thread, FIFO, bounded, cancellable while waiting."""

from __future__ import annotations

import asyncio
import threading

import pytest

from imageserver.errors import QueueFull
from imageserver.worker import GpuWorker


async def until(predicate, what: str) -> None:
    for _ in range(3000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_jobs_run_in_order_on_one_thread_and_the_queue_is_bounded() -> None:
    worker = GpuWorker(queue_limit=2)
    gate, started = threading.Event(), threading.Event()
    ran: list[tuple[str, str]] = []

    def job(name: str) -> str:
        started.set()
        gate.wait(30)
        ran.append((name, threading.current_thread().name))
        return name

    try:
        tasks = [asyncio.create_task(worker.run(job, "a"))]
        await asyncio.to_thread(started.wait, 30)
        for name in ("b", "c"):
            tasks.append(asyncio.create_task(worker.run(job, name)))
            count = len(tasks)
            await until(lambda count=count: worker.admitted == count, "admitted")
        with pytest.raises(QueueFull) as info:
            await worker.run(job, "d")
        assert info.value.retry_after >= 1
        gate.set()
        assert await asyncio.gather(*tasks) == ["a", "b", "c"]
        assert [name for name, _ in ran] == ["a", "b", "c"]
        assert len({thread for _, thread in ran}) == 1
        assert worker.admitted == 0
    finally:
        gate.set()
        worker.shutdown()


async def test_a_cancelled_waiting_job_never_runs_and_frees_its_place() -> None:
    worker = GpuWorker(queue_limit=1)
    gate, started = threading.Event(), threading.Event()
    ran: list[str] = []

    def job(name: str) -> str:
        started.set()
        gate.wait(30)
        ran.append(name)
        return name

    try:
        running = asyncio.create_task(worker.run(job, "running"))
        await asyncio.to_thread(started.wait, 30)
        waiting = asyncio.create_task(worker.run(job, "cancelled"))
        await until(lambda: worker.admitted == 2, "two admitted")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await until(lambda: worker.admitted == 1, "place freed")
        after = asyncio.create_task(worker.run(job, "after"))
        gate.set()
        assert await running == "running" and await after == "after"
        assert ran == ["running", "after"]
    finally:
        gate.set()
        worker.shutdown()


async def test_exceptions_propagate_and_free_the_place() -> None:
    worker = GpuWorker(queue_limit=0)

    def boom() -> None:
        raise ValueError("boom")

    try:
        with pytest.raises(ValueError, match="boom"):
            await worker.run(boom)
        assert worker.admitted == 0
        assert await worker.run(lambda: 5) == 5
    finally:
        worker.shutdown()


async def test_background_jobs_do_not_count_against_the_limit() -> None:
    worker = GpuWorker(queue_limit=0)
    gate = threading.Event()
    try:
        background = worker.submit_background(lambda: gate.wait(30))
        assert worker.admitted == 0
        task = asyncio.create_task(worker.run(lambda: "after load"))
        await until(lambda: worker.admitted == 1, "admitted behind the load")
        assert not task.done()
        gate.set()
        assert await task == "after load" and background.result() is True
    finally:
        gate.set()
        worker.shutdown()
