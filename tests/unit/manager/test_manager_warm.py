"""The warm tier in the scheduler, over the fake runtime, probe and warm control: sleeping
instead of stopping, waking instead of starting, the host-memory budget, the cost rule,
adoption of sleeping servers and the faults (a failed sleep or wake, a sleeping server
that dies)."""

from __future__ import annotations

import asyncio

import pytest
from manager_fakes import FakeClock, FakeProbe, FakeRuntime, FakeWarm, catalogue, until

from manager.runtime import spec_hash
from manager.scheduler import Scheduler, SchedulerConfig
from manager.state import ModelState
from manager.warm import SwapTimes, WarmControl
from wire.events import StateEvent, SwapEvent

BASE = {
    "type": "text",
    "image": "vllm/vllm-openai:v0.32.0",
    "gpu_memory_mib": 10_000,
}
MODELS = {
    "a": {**BASE, "container": "w-a", "port": 18101, "model": "org/a", "warm": {"level": 1}},
    "b": {**BASE, "container": "w-b", "port": 18102, "model": "org/b", "warm": {"level": 2}},
    "c": {**BASE, "container": "w-c", "port": 18103, "model": "org/c"},
    "$gpu_budget_mib": 10_000,
}
S = ModelState


def models(**changes: dict) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in MODELS.items()}
    for name, change in changes.items():
        data[name].update(change)
    return data


def make(
    runtime: FakeRuntime,
    probe: FakeProbe,
    clock: FakeClock,
    data: dict | None = None,
    *,
    host_mib: int | None = 40_000,
    times: SwapTimes | None = None,
) -> tuple[Scheduler, FakeWarm]:
    from manager.budget import GpuBudget

    cat = catalogue(data or MODELS)
    warm = FakeWarm(runtime, cat)
    if times is None:  # the fake clock stands still: learned starts would take 0 s
        times = SwapTimes()
        for name in cat.models:
            for _ in range(9):
                times.record(name, "load_s", 60.0)
    sched = Scheduler(
        cat,
        runtime,
        probe,
        SchedulerConfig(queue_timeout=30, lease_ttl=120, stop_backoff=0),
        clock=clock,
        budget=GpuBudget(10_000, 10_000, "test"),
        warm=warm,
        host_budget_mib=host_mib,
        swap_times=times,
    )
    return sched, warm


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime(capacity=10_000)


@pytest.fixture
async def warm_sched(runtime, probe, clock):
    sched, warm = make(runtime, probe, clock)
    yield sched, warm
    await sched.close()


async def use(sched: Scheduler, model: str) -> None:
    lease = await sched.acquire(model)
    sched.release(lease.lease_id)


def test_the_fake_satisfies_the_protocol(runtime) -> None:
    assert isinstance(FakeWarm(runtime, catalogue(MODELS)), WarmControl)


async def test_a_warm_model_sleeps_to_make_room_and_wakes_instead_of_starting(
    warm_sched, runtime
) -> None:
    sched, warm = warm_sched
    events = sched.events.subscribe()
    await use(sched, "a")
    await use(sched, "c")  # a does not fit beside c: it falls asleep, c starts
    assert sched.state("a") is S.SLEEPING
    assert ("stop", "a") not in runtime.calls
    assert [c[:2] for c in warm.calls] == [("sleep", "a")]
    assert warm.calls[0][2] == sched._records["a"].api_key  # the server's upstream key
    assert sched.residents == ["c"] and sched.sleepers == ["a"]
    await use(sched, "a")  # c is not warm: stopped; a wakes, no new server
    assert sched.state("a") is S.READY and sched.state("c") is S.STOPPED
    assert runtime.calls.count(("start", "a")) == 1
    assert [c[:2] for c in warm.calls] == [("sleep", "a"), ("wake", "a")]
    assert (sched.sleeps, sched.wakes) == (1, 1)
    from manager.metrics import render

    text = render(sched).decode()
    assert "homelab_manager_sleeps_total 1.0" in text and "homelab_manager_wakes_total 1.0" in text
    moves = []
    while (event := await events.next(0)) is not None:
        if isinstance(event, StateEvent) and event.model == "a":
            moves.append(event.state)
        if isinstance(event, SwapEvent) and event.to == "a" and moves[-1] == "waking":
            assert event.from_model == "c"
    assert moves == ["starting", "ready", "falling_asleep", "sleeping", "waking", "ready"]
    status = sched.model_status("a")
    assert status.warm_level == 1 and status.wake_seconds is not None


async def test_idle_ttl_stops_a_sleeping_model_too(runtime, probe, clock) -> None:
    # asleep, it holds host memory: its idle_ttl gives that back as it gives back the GPU
    sched, warm = make(runtime, probe, clock, models(a={"idle_ttl": 60}))
    try:
        await use(sched, "a")
        clock.advance(30)
        await use(sched, "c")  # a falls asleep 30 s into its idle time
        assert sched.state("a") is S.SLEEPING
        clock.advance(20)  # c's use does not count as a's
        await sched.tick()
        assert sched.state("a") is S.SLEEPING
        clock.advance(11)
        await sched.tick()
        await until(lambda: sched.state("a") is S.STOPPED, "idle stop of a sleeper")
        assert ("stop", "a") in runtime.calls and sched.sleepers == []
        assert sched.state("c") is S.READY
    finally:
        await sched.close()


async def test_a_model_with_a_lease_in_flight_is_never_put_to_sleep(warm_sched) -> None:
    sched, warm = warm_sched
    held = await sched.acquire("a")
    wanted = asyncio.create_task(sched.acquire("c"))
    await asyncio.sleep(0.01)
    assert sched.state("a") is S.READY and warm.calls == []
    sched.release(held.lease_id)
    lease = await wanted
    assert sched.state("a") is S.SLEEPING
    sched.release(lease.lease_id)


async def test_what_does_not_fit_the_host_budget_is_stopped(runtime, probe, clock) -> None:
    sched, warm = make(runtime, probe, clock, models(a={"warm": {"host_memory_mib": 50_000}}))
    try:
        await use(sched, "a")
        await use(sched, "c")
        assert sched.state("a") is S.STOPPED and warm.calls == []
    finally:
        await sched.close()


async def test_without_a_host_budget_nothing_sleeps(runtime, probe, clock) -> None:
    sched, warm = make(runtime, probe, clock, host_mib=None)
    try:
        await use(sched, "a")
        await use(sched, "c")
        assert sched.state("a") is S.STOPPED and warm.calls == []
    finally:
        await sched.close()


async def test_a_model_cheap_to_cold_start_is_stopped(runtime, probe, clock) -> None:
    times = SwapTimes()
    times.record("a", "load_s", 1.5)  # learned: its cold start saves nothing worth keeping
    times.record("a", "wake_s", 1.0)
    times.record("c", "load_s", 60.0)
    sched, warm = make(runtime, probe, clock, times=times)
    try:
        await use(sched, "a")
        await use(sched, "c")
        assert sched.state("a") is S.STOPPED and warm.calls == []
    finally:
        await sched.close()


async def test_a_sleeper_worth_less_gives_its_host_memory_to_one_worth_more(
    runtime, probe, clock
) -> None:
    times = SwapTimes()
    for name, load in (("a", 60.0), ("b", 5.0)):
        for _ in range(5):
            times.record(name, "load_s", load)
        times.record(name, "wake_s", 1.0)
    data = models(a={"warm": {"host_memory_mib": 8000}}, b={"warm": {"host_memory_mib": 8000}})
    sched, warm = make(runtime, probe, clock, data, host_mib=10_000, times=times)
    try:
        await use(sched, "b")
        await use(sched, "a")  # b sleeps (the host has room)
        assert sched.state("b") is S.SLEEPING
        await use(sched, "c")  # a is worth more asleep than b: b is stopped, a sleeps
        assert sched.state("a") is S.SLEEPING and sched.state("b") is S.STOPPED
        assert sum(1 for n in sched.sleepers) == 1
    finally:
        await sched.close()


async def test_a_failed_wake_falls_back_to_a_stop_and_a_cold_start(warm_sched, runtime) -> None:
    sched, warm = warm_sched
    await use(sched, "a")
    await use(sched, "c")
    warm.fail_wake.add("a")
    lease = await sched.acquire("a")  # the request is served all the same, cold
    assert sched.state("a") is S.READY
    assert runtime.calls.count(("start", "a")) == 2 and ("stop", "a") in runtime.calls
    assert "wake failed" in (sched.model_status("a").last_error or "")
    sched.release(lease.lease_id)


async def test_a_failed_sleep_stops_the_model(warm_sched, runtime) -> None:
    sched, warm = warm_sched
    await use(sched, "a")
    warm.fail_sleep.add("a")
    await use(sched, "c")
    assert sched.state("a") is S.STOPPED and ("stop", "a") in runtime.calls
    assert "sleep failed" in (sched.model_status("a").last_error or "")


async def test_a_sleeping_server_that_dies_is_noticed(warm_sched, runtime) -> None:
    sched, warm = warm_sched
    await use(sched, "a")
    await use(sched, "c")
    runtime.kill("a")
    await sched.tick()
    assert sched.state("a") is S.FAILED
    assert "while asleep" in (sched.model_status("a").last_error or "")
    assert sched.sleepers == []  # its host memory went with it
    await use(sched, "a")  # cleaned up and cold-started
    assert sched.state("a") is S.READY and runtime.calls.count(("start", "a")) == 2


async def test_an_explicit_stop_stops_a_sleeping_model(warm_sched, runtime) -> None:
    sched, warm = warm_sched
    await use(sched, "a")
    await use(sched, "c")
    assert await sched.stop("a") is S.STOPPED
    assert ("stop", "a") in runtime.calls and sched.sleepers == []


async def test_a_model_waking_holds_its_gpu_memory(warm_sched, runtime) -> None:
    sched, warm = warm_sched
    await use(sched, "a")
    await use(sched, "c")
    warm.hold("a")
    wanted = asyncio.create_task(sched.acquire("a"))
    await until(lambda: sched.state("a") is S.WAKING, "a waking")
    assert sched.residents == ["a"]  # c stopped first; a takes the GPU while it wakes
    other = asyncio.create_task(sched.acquire("c"))
    await asyncio.sleep(0.01)
    assert sched.state("c") is S.STOPPED  # no room while a wakes
    warm.release("a")
    sched.release((await wanted).lease_id)
    sched.release((await other).lease_id)


async def test_a_restarted_manager_keeps_a_sleeping_server_asleep(runtime, probe, clock) -> None:
    first, warm = make(runtime, probe, clock)
    await use(first, "a")
    await use(first, "c")
    await first.close()
    starts = runtime.calls.count(("start", "a"))
    second, warm = make(runtime, probe, clock)
    try:
        await second.start()
        assert second.state("a") is S.SLEEPING
        assert second.state("c") is S.STARTING or second.state("c") is S.READY
        await use(second, "a")  # woken, not started
        assert runtime.calls.count(("start", "a")) == starts
        assert [c[:2] for c in warm.calls] == [("wake", "a")]
        assert warm.calls[0][2] == runtime.instances["a"].api_key
    finally:
        await second.close()


async def test_adoption_stops_sleepers_beyond_the_host_budget(runtime, probe, clock) -> None:
    data = models(a={"warm": {"host_memory_mib": 8000}}, b={"warm": {"host_memory_mib": 8000}})
    cat = catalogue(data)
    for name in ("a", "b"):
        runtime.put(name, hash_=spec_hash(cat.models[name]))
        runtime.asleep.add(name)
    sched, warm = make(runtime, probe, clock, data, host_mib=10_000)
    try:
        await sched.start()
        assert sched.state("a") is S.SLEEPING and sched.state("b") is S.STOPPED
        assert ("stop", "b") in runtime.calls
    finally:
        await sched.close()


async def test_host_memory_is_learned_once_asleep(runtime, probe, clock) -> None:
    times = SwapTimes()
    times.record("a", "load_s", 60.0)
    times.record("a", "load_s", 60.0)
    sched, warm = make(runtime, probe, clock, times=times)
    runtime.host_mib["a"] = 1234
    try:
        await use(sched, "a")
        await use(sched, "c")
        await until(lambda: times.readings("a", "host_mib") == [1234], "the reading")
        assert sched.model_status("a").host_memory_mib == 1234
        assert times.readings("a", "load_s") == [60.0, 60.0, 0.0]  # the fake clock stood still
    finally:
        await sched.close()


async def test_without_a_gpu_budget_one_model_runs_and_the_other_sleeps(probe, clock) -> None:
    runtime = FakeRuntime()  # never two servers on the GPU at once (asleep ones aside)
    data = {k: v for k, v in models().items() if k != "$gpu_budget_mib"}
    for entry in data.values():
        entry.pop("gpu_memory_mib")
    cat = catalogue(data)
    times = SwapTimes()
    for name in cat.models:
        for _ in range(9):
            times.record(name, "load_s", 60.0)
    sched = Scheduler(
        cat,
        runtime,
        probe,
        SchedulerConfig(queue_timeout=30, stop_backoff=0),
        clock=clock,
        warm=FakeWarm(runtime, cat),
        host_budget_mib=40_000,
        swap_times=times,
    )
    try:
        for name in ("a", "b", "a", "c", "b"):
            await use(sched, name)
        assert sched.state("b") is S.READY and sched.residents == ["b"]
        assert sched.state("a") is S.SLEEPING and sched.state("c") is S.STOPPED
        assert runtime.calls.count(("start", "a")) == 1  # woken, never started again
    finally:
        await sched.close()
