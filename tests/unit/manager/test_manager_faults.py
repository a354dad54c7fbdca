"""The scheduler's side of issue 12: leases kept across a restart, a death reported by the
runtime checked at once, and the per-model concurrency limit."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from manager_fakes import CATALOGUE, FakeProbe, FakeRuntime, catalogue, until

from manager.errors import BusyError
from manager.lease_store import LeaseStore
from manager.leases import LeaseTable
from manager.runtime import Instance, spec_hash
from manager.scheduler import Scheduler, SchedulerConfig
from manager.state import ModelState

CONFIG = SchedulerConfig(queue_limit=16, queue_timeout=300, batch_bound=3, lease_ttl=120)


async def test_a_restarted_manager_keeps_the_leases_and_does_not_stop_their_model(
    tmp_path: Path,
) -> None:
    store = LeaseStore(tmp_path / "leases.json")
    runtime = FakeRuntime()
    first = Scheduler(catalogue(), runtime, FakeProbe(), CONFIG, lease_store=store)
    lease = await first.acquire("alpha")
    await asyncio.sleep(0)  # the write happens at the end of the loop turn
    assert [s.lease_id for s in store.load()] == [lease.lease_id]
    # The manager dies (nothing closed); the server keeps running.
    second = Scheduler(catalogue(), runtime, FakeProbe(), CONFIG, lease_store=store)
    try:
        await second.start()
        await until(lambda: second.state("alpha") is ModelState.READY, "alpha adopted")
        assert second.model_status("alpha").in_flight == 1
        waiter = asyncio.create_task(second.acquire("beta"))
        await asyncio.sleep(0.05)
        assert second.state("alpha") is ModelState.READY, "stopped with a lease in flight"
        assert not waiter.done()
        second.release(lease.lease_id)  # the proxy settles its release when it is back
        beta = await asyncio.wait_for(waiter, 5)
        assert beta.model == "beta"
    finally:
        await second.close()
        await first.close()


def test_the_lease_file_keeps_max_concurrent_and_reads_older_files_with_1(
    tmp_path: Path,
) -> None:
    store = LeaseStore(tmp_path / "leases.json")
    table = LeaseTable(60, time.monotonic, store=store)
    lease = table.grant("alpha", "text", "http://h:1", 0, max_concurrent=5)
    again = LeaseTable(60, time.monotonic, store=store)
    (kept,) = again.restore(lambda model: "text")
    assert (kept.lease_id, kept.max_uses, kept.max_concurrent) == (lease.lease_id, 0, 5)
    entry = json.loads(store.path.read_text())["leases"][0]
    del entry["max_concurrent"]  # a file from before max_concurrent
    entry["max_uses"] = 8
    store.path.write_text(json.dumps({"leases": [entry]}))
    (old,) = LeaseTable(60, time.monotonic, store=store).restore(lambda model: "text")
    assert (old.max_uses, old.max_concurrent) == (8, 1)


async def test_kept_leases_of_a_model_that_is_not_running_are_dropped(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "leases.json")
    runtime = FakeRuntime()
    first = Scheduler(catalogue(), runtime, FakeProbe(), CONFIG, lease_store=store)
    await first.acquire("alpha")
    await asyncio.sleep(0)
    runtime.kill("alpha")
    second = Scheduler(catalogue(), runtime, FakeProbe(), CONFIG, lease_store=store)
    try:
        await second.start()
        assert second.model_status("alpha").in_flight == 0
    finally:
        await second.close()
        await first.close()


class ExitRuntime(FakeRuntime):
    """FakeRuntime that reports exits the way ProcessRuntime.watch_exits does."""

    def watch_exits(self, callback) -> None:
        self.on_exit = callback

    def kill(self, name: str, exit_code: int = 137) -> None:
        super().kill(name, exit_code)
        self.on_exit(name)


async def test_a_server_exit_reported_by_the_runtime_fails_the_model_at_once() -> None:
    runtime = ExitRuntime()
    config = SchedulerConfig(liveness_interval=3600, lease_ttl=120)  # no housekeeping help
    sched = Scheduler(catalogue(), runtime, FakeProbe(), config)
    try:
        await sched.start()
        lease = await sched.acquire("alpha")
        sched.release(lease.lease_id)
        runtime.kill("alpha")
        await until(lambda: sched.state("alpha") is ModelState.FAILED, "death noticed")
        # The next request waits for a fresh start instead of a lease on the dead server.
        again = await asyncio.wait_for(sched.acquire("alpha"), 5)
        assert again.model == "alpha" and sched.state("alpha") is ModelState.READY
        assert runtime.calls.count(("start", "alpha")) == 2
    finally:
        await sched.close()


async def test_check_marks_a_dead_server_failed() -> None:
    runtime = FakeRuntime()
    sched = Scheduler(catalogue(), runtime, FakeProbe(), SchedulerConfig(liveness_interval=3600))
    try:
        lease = await sched.acquire("alpha")
        sched.release(lease.lease_id)
        runtime.kill("alpha")
        status = await sched.check("alpha")
        assert status.state == "failed"
    finally:
        await sched.close()


async def test_requests_beyond_max_in_flight_wait_in_the_queue() -> None:
    data = {"pix": {**CATALOGUE["pix"], "max_in_flight": 4}}
    config = SchedulerConfig(queue_limit=16, queue_timeout=300, batch_bound=3, lease_ttl=120)
    sched = Scheduler(catalogue(data), FakeRuntime(), FakeProbe(), config)
    try:
        first = await sched.acquire("pix")
        assert (first.max_uses, first.max_concurrent) == (0, 3)
        second = await sched.acquire("pix")
        assert second.max_concurrent == 1, "only one use of room left"
        third = asyncio.create_task(sched.acquire("pix"))
        await asyncio.sleep(0.05)
        assert not third.done(), "no room: the request waits"
        assert sched.model_status("pix").waiting == 1
        sched.release(second.lease_id)
        assert (await asyncio.wait_for(third, 5)).max_concurrent == 1
    finally:
        await sched.close()


async def test_waiting_for_room_is_bounded_by_the_queue_timeout() -> None:
    data = {"pix": {**CATALOGUE["pix"], "max_in_flight": 1}}
    sched = Scheduler(catalogue(data), FakeRuntime(), FakeProbe(), CONFIG)
    try:
        await sched.acquire("pix")
        try:
            await sched.acquire("pix", timeout=0.1)
        except BusyError as exc:
            assert exc.retry_after >= 1
        else:
            raise AssertionError("a request beyond the limit must wait, then time out")
    finally:
        await sched.close()


def test_max_in_flight_does_not_change_the_spec_hash() -> None:
    plain = catalogue().models["alpha"]
    limited = plain.model_copy(update={"max_in_flight": 3})
    assert spec_hash(plain) == spec_hash(limited)
    assert isinstance(Instance("alpha", running=True), Instance)
